// The metadata side channel: a TCP listener that serves blobs by key (the empty key: the
// agent's current metadata; other keys: items the agent published), and the client that
// fetches one.
//
// Wire, one exchange per connection:
//   client: the 8-byte magic "KVBMRQ01", a little-endian uint32 key length (at most
//           kMaxKeyBytes), then the key's bytes (none for the metadata).
//   server: the 8-byte magic "KVBMMD01", a little-endian uint64 length, then the payload,
//           and closes. When the provider fails, or the request is malformed (wrong
//           magic, a key over kMaxKeyBytes, the client closing before the whole request),
//           it writes "KVBMER01", a little-endian uint64 length (at most 4096) and the
//           error's text instead, so the client can say why.
// The server reads exactly the request's bytes, never more. The client bounds the size
// (max_bytes) and the time.
//
// The server serves up to 64 connections at once, each within 5 s from its accept,
// request and reply together (a slow, silent or stuck client is dropped then); its
// destructor returns promptly even with clients connected. fetch_blob may be called from
// any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// The longest key a request may name.
constexpr size_t kMaxKeyBytes = 256;

class SideChannelServer {
 public:
  // Produces the bytes to serve for `key` (empty: the server's main blob, the metadata),
  // per request, so peers always get current bytes; its error reaches the client as text.
  // Called on the server's thread, one call at a time.
  using Provider = std::function<Result<std::string>(const std::string& key)>;

  // Binds host:port (port 0: any free port) and starts serving on its own thread.
  // Io naming host and port when binding fails; InvalidArgument for a bad host.
  static Result<std::unique_ptr<SideChannelServer>> start(const std::string& host, uint16_t port,
                                                          Provider provider);
  ~SideChannelServer();  // stops the thread and closes the socket
  uint16_t port() const { return port_; }

 private:
  SideChannelServer() = default;
  void serve();

  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: tells serve() to stop
  uint16_t port_ = 0;
  Provider provider_;
  std::thread thread_;
};

// Connects, asks for the blob under `key` (empty: the metadata), reads it, closes.
// Timeout when the whole exchange exceeds `timeout`; Io for a refused or reset
// connection; InvalidArgument for a wrong magic, a length over `max_bytes`, or a short
// payload; Remote (with the server's text) when the server could not provide it (an
// unknown key, a failed provider); InvalidArgument for a host that does not resolve, a
// timeout <= 0, or a key over kMaxKeyBytes.
Result<std::string> fetch_blob(const std::string& host, uint16_t port, std::string_view key,
                               std::chrono::milliseconds timeout, size_t max_bytes);

}  // namespace kvbm::xfer::detail
