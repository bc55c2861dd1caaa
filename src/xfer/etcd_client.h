// A small etcd v3 client over etcd's JSON gateway (HTTP POST of JSON to /v3/..., keys and
// values base64-encoded), through libcurl. It does what agent discovery needs: leases
// (grant, keep alive, revoke), put/get/delete of keys and prefixes, and a watch of a
// prefix. Requests go to the first endpoint that answers; a request that no endpoint
// answers is an Io error naming the endpoints.
//
// Why the gateway and not gRPC: it needs only libcurl and the JSON parser the project
// already uses, and etcd 3.4 (Debian's) serves it on the client port by default.
//
// Thread safety: every call may be made from many threads at once (each request uses its
// own curl handle). An EtcdWatch runs its own thread; stop() or its destructor ends it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t mod_revision = 0;
};

struct EtcdEvent {
  enum class Type : uint8_t { Put, Delete };
  Type type = Type::Put;
  std::string key;
  std::string value;  // empty for Delete
  int64_t mod_revision = 0;
};

class EtcdClient {
 public:
  // `endpoints`: "http://host:port" (the scheme may be left out). InvalidArgument for an
  // empty list or an endpoint that is not http. Connects to nothing yet.
  static Result<std::unique_ptr<EtcdClient>> create(std::vector<std::string> endpoints,
                                                    std::chrono::milliseconds timeout);
  ~EtcdClient();

  const std::vector<std::string>& endpoints() const { return endpoints_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // A lease of `ttl` seconds; its id.
  Result<int64_t> grant_lease(std::chrono::seconds ttl);
  // Refreshes a lease once. NotFound when etcd no longer knows it (it expired).
  Status keep_alive(int64_t lease);
  Status revoke_lease(int64_t lease);

  // Puts key = value, attached to `lease` when nonzero.
  Status put(std::string_view key, std::string_view value, int64_t lease = 0);
  // The value of `key`, or nullopt when there is none.
  Result<std::optional<std::string>> get(std::string_view key);
  // Every key starting with `prefix`, in key order.
  Result<std::vector<EtcdKeyValue>> get_prefix(std::string_view prefix);
  // Deletes `key`; how many keys were deleted (0 or 1).
  Result<int64_t> del(std::string_view key);

  // POSTs `body` to `path` on the first endpoint that answers; the response body.
  // InvalidArgument for a non-2xx status (with etcd's message), Io when none answers.
  Result<std::string> call(std::string_view path, const std::string& body);

 private:
  EtcdClient(std::vector<std::string> endpoints, std::chrono::milliseconds timeout);
  std::vector<std::string> endpoints_;
  std::chrono::milliseconds timeout_;
};

// Watches every key under a prefix from the current revision on, calling `on_event` on
// its own thread for each change, and `on_error` when the stream breaks (it then
// reconnects after a short pause, from the revision after the last event it saw, so no
// event is lost while etcd keeps its history).
class EtcdWatch {
 public:
  using EventFn = std::function<void(const EtcdEvent&)>;
  using ErrorFn = std::function<void(const Error&)>;

  // Starts watching; returns once the watch is established on etcd (so every change
  // made after start() returns is seen), or Io/Timeout if it could not be.
  static Result<std::unique_ptr<EtcdWatch>> start(const EtcdClient& client, std::string prefix,
                                                  EventFn on_event, ErrorFn on_error = {});
  ~EtcdWatch();  // stop()
  // Ends the watch and joins its thread; no callback runs once it returns.
  void stop();

  struct State;

 private:
  explicit EtcdWatch(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
  std::thread thread_;
};

// Base64 (RFC 4648, padded), as the JSON gateway carries keys and values. decode: nullopt
// for invalid input.
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace kvbm::xfer::detail
