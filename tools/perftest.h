// ucx_perftest, the ceiling `kvbm bench xfer` measures beside itself in the same run: both
// of its ends on this host (loopback), or its client against the server that `kvbm serve
// --perftest` keeps listening on the peer's host.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::tools {

struct PerftestResult {
  double p50_us = 0;      // its 50th percentile latency
  double overall_us = 0;  // total time / iterations
  double gbps = 0;        // size / overall latency
};

// Where and how ucx_perftest runs.
struct Perftest {
  std::string exe;                 // the program
  std::optional<std::string> tls;  // UCX_TLS for it; nullopt: ours
  std::string host;                // empty: a server of our own on loopback; else the peer's
  uint16_t port = 0;               // the peer's server (with `host`)
};

// One ucx_perftest test, parsed from the CSV line of `-f -v`. Io naming the test when it
// cannot run or prints no result (after a few tries: a client that connects before the
// server listens fails).
Result<PerftestResult> run_perftest(const Perftest& p, const std::string& test, size_t size,
                                    size_t iters, std::vector<std::string> extra = {});

// A TCP port free at the moment, on loopback or on every address; 0 if none.
uint16_t free_tcp_port(bool any_address);

// Keeps a ucx_perftest server listening on one port of every address of this host, started
// again after each test (a server runs one), until destroyed. The servers die with us.
// Thread safety: construction and destruction from one thread.
class PerftestServer {
 public:
  // NotFound when `program` is not found; Io when no port is free.
  static Result<std::unique_ptr<PerftestServer>> start(const std::string& program);
  ~PerftestServer();
  PerftestServer(const PerftestServer&) = delete;
  PerftestServer& operator=(const PerftestServer&) = delete;
  uint16_t port() const { return port_; }

 private:
  PerftestServer(std::string exe, uint16_t port) : exe_(std::move(exe)), port_(port) {}
  void serve();
  const std::string exe_;
  const uint16_t port_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kvbm::tools
