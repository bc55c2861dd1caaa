// The metadata side channel: a TCP listener that serves blobs by key (the empty key: the
// agent's current metadata; other keys: items the agent published), and the client that
// fetches one. One exchange per connection; side_channel_wire.h has the bytes.
//
// Abuse: the server serves up to SideChannelOptions::max_connections connections at once;
// a new one past that evicts the connection that has waited longest for its request or,
// if every one is replying, the one whose reply progressed least recently. Each connection
// must deliver its request within request_timeout of its accept and read its whole reply
// within reply_timeout of the request. Replies are sent from the provider's shared,
// immutable buffers, never a copy per client: the bytes of distinct payloads held for
// connections at once stay within max_reply_bytes (a request whose payload would exceed it
// is answered "busy"), plus at most kMaxErrorBytes per connection for error texts.
//
// Authentication: with an auth key, the server answers only authenticated requests (a MAC
// made with the key, a timestamp within auth_window of its clock, a nonce it has not seen
// within that window) and MACs its replies; other requests get an error reply that says why.
// fetch_blob with a key sends authenticated requests and accepts only replies MACed with it.
//
// The server's destructor returns promptly even with clients connected. fetch_blob may be
// called from any thread; stats() too.
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
#include "xfer/side_channel_wire.h"

namespace kvbm::xfer::detail {

// A reply's bytes, shared by every connection that sends them.
using Blob = std::shared_ptr<const std::string>;

struct SideChannelOptions {
  std::chrono::milliseconds request_timeout{5000};  // from accept to the whole request
  std::chrono::milliseconds reply_timeout{10000};   // from the request to the whole reply read
  size_t max_connections = 1024;
  size_t max_reply_bytes = size_t{256} << 20;
  std::string auth_key;  // empty: no authentication
  std::chrono::seconds auth_window{30};
};

// What the server holds now, and what it has dropped so far.
struct SideChannelStats {
  size_t connections = 0;
  size_t replying = 0;     // connections past their request
  size_t reply_bytes = 0;  // distinct payload and error-text bytes held for connections
  uint64_t timed_out = 0;  // dropped at their request or reply deadline
  uint64_t evicted = 0;    // dropped to make room for a new connection
  uint64_t busy = 0;       // requests refused because of max_reply_bytes
};

class SideChannelServer {
 public:
  // Produces the bytes to serve for `key` (empty: the server's main blob, the metadata),
  // per request, so peers always get current bytes; its error reaches the client as text.
  // Called on the server's thread, one call at a time. Returning the same Blob for the
  // same bytes lets every client share them.
  using Provider = std::function<Result<Blob>(const std::string& key)>;

  // Binds host:port (port 0: any free port) and starts serving on its own thread.
  // Io naming host and port when binding fails; InvalidArgument for a bad host, a zero
  // timeout or max_connections, or an auth key under kMinAuthKeyBytes.
  static Result<std::unique_ptr<SideChannelServer>> start(const std::string& host, uint16_t port,
                                                          Provider provider,
                                                          SideChannelOptions options = {});
  ~SideChannelServer();  // stops the thread and closes the socket
  uint16_t port() const { return port_; }
  SideChannelStats stats() const;

 private:
  friend class ServeLoop;
  SideChannelServer() = default;
  void serve();

  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: tells serve() to stop
  uint16_t port_ = 0;
  Provider provider_;
  SideChannelOptions options_;
  std::thread thread_;
  // Written by the server thread, read by stats().
  std::atomic<size_t> connections_{0}, replying_{0}, reply_bytes_{0};
  std::atomic<uint64_t> timed_out_{0}, evicted_{0}, busy_{0};
};

// Connects, asks for the blob under `key` (empty: the metadata), reads it, closes. With
// `auth_key`, the request is authenticated and the reply must be.
// Timeout when the whole exchange exceeds `timeout`; Io for a refused or reset
// connection; InvalidArgument for a wrong magic, a length over `max_bytes`, a short
// payload, or (with a key) a reply that is not authenticated with it; Remote (with the
// server's text) when the server could not or would not provide it (an unknown key, a
// failed provider, a refused authentication); InvalidArgument for a host that does not
// resolve, a timeout <= 0, or a key over kMaxKeyBytes.
Result<std::string> fetch_blob(const std::string& host, uint16_t port, std::string_view key,
                               std::chrono::milliseconds timeout, size_t max_bytes,
                               std::string_view auth_key = {});

}  // namespace kvbm::xfer::detail
