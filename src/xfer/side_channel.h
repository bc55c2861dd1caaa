// The metadata side channel: a TCP listener that serves a blob (the agent's current
// metadata) to whoever connects, and the client that fetches it.
//
// Wire: the server writes an 8-byte magic "KVBMMD01", a little-endian uint64 length,
// then the payload, and closes. The client bounds the size (max_bytes) and the time.
// When the provider fails, the server writes "KVBMER01", a little-endian uint64 length
// (at most 4096) and the error's text instead, so the client can say why.
//
// The server serves up to 64 connections at once, each within 5 s (a slow or stuck
// client is dropped then); its destructor returns promptly even with clients connected.
// fetch_blob may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

class SideChannelServer {
 public:
  // Produces the bytes to serve, per connection (so peers always get current metadata).
  // Called on the server's thread, one call at a time.
  using Provider = std::function<Result<std::string>()>;

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

// Connects, reads one blob, closes. Timeout when the whole exchange exceeds `timeout`;
// Io for a refused or reset connection; InvalidArgument for a wrong magic, a length over
// `max_bytes`, or a short payload; Remote (with the server's text) when the server's
// provider failed; InvalidArgument for a host that does not resolve or a timeout <= 0.
Result<std::string> fetch_blob(const std::string& host, uint16_t port,
                               std::chrono::milliseconds timeout, size_t max_bytes);

}  // namespace kvbm::xfer::detail
