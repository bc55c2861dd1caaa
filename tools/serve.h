// `kvbm serve`: a target agent for peers on other hosts. It registers a host buffer (and
// optionally a file), publishes their descriptors (RemoteDescriptor bytes) under the keys
// below on its side channel and, with etcd, in etcd, and serves until SIGINT or SIGTERM.
// The same code is the target process of `kvbm bench xfer` and `kvbm bench soak` (the
// hidden `kvbm bench xfer-target`), which a parent drives over stdin instead of signals.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "commands.h"
#include "kvbm/result.h"

namespace kvbm::tools {

// The items a served agent publishes: its buffer and, with a file, its file.
inline constexpr const char* kServeBufferKey = "kvbm-serve/buffer";
inline constexpr const char* kServeFileKey = "kvbm-serve/file";
// With --perftest: the port (decimal) of the ucx_perftest server it keeps listening.
inline constexpr const char* kServePerftestKey = "kvbm-serve/perftest";

struct ServeOptions {
  std::string name = "kvbm-serve";   // the agent's name (the etcd key's last part)
  std::string listen = "0.0.0.0:0";  // side channel HOST:PORT (port 0: any); "": none
  std::vector<std::string> etcd;     // endpoints; empty: $KVBM_ETCD_ENDPOINTS, or none
  std::string etcd_prefix;           // empty: $KVBM_ETCD_PREFIX, else "kvbm/"
  size_t bytes = size_t{64} << 20;   // the registered host buffer
  size_t file_bytes = 0;             // also a registered file of this size (0: none)
  std::string dir;                   // where that file is made (default: the temp dir)
  bool spin = false;                 // spin on progress() instead of a progress thread
  std::string perftest;              // keep this ucx_perftest's server listening ("": none)
  // The bench's target: stops when stdin says "quit" or closes, and prints one line
  // "READY <port> <buffer addr> [<file fd>]" instead of the user's summary.
  bool bench_target = false;
};

// "host:port" or "[v6 address]:port" -> (host, port); InvalidArgument naming the text when
// the port is missing or not in 0..65535 (0 only with allow_any_port) or the host is empty.
Result<std::pair<std::string, uint16_t>> parse_host_port(std::string_view text,
                                                         bool allow_any_port);

// Exit status 0 after a signal (or, as the bench's target, "quit"); 1 with a message on
// stderr when the agent, its memory, the listener or etcd cannot be set up.
int run_serve(const ServeOptions& options);

// `kvbm serve` on the command line.
void add_serve(CLI::App& app, Runner& runner);

}  // namespace kvbm::tools
