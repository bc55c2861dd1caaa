// The subcommands of `kvbm`; each returns the process exit code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

// CLI11 is parsed only where a command's options are declared (main.cc, bench_*.cc): it
// is the slowest header to compile, and most subcommands only need their options struct.
namespace CLI {
class App;
}

namespace kvbm::tools {

struct DemoOptions {
  std::filesystem::path dir;        // where Disk storage goes; empty: a fresh temp dir
  size_t bytes = 64 << 20;          // per tier, rounded down to whole 256 KiB blocks (at least 1)
  std::string transport = "tcp";    // UCX to the peer: "tcp" (loopback) or "shm"
  size_t corrupt_block = SIZE_MAX;  // test hook: the peer damages this block before checking
  bool json = false;                // one JSON document on stdout instead of the tables
};

// The hidden second process of `kvbm demo` (tools/demo_peer.cc).
struct DemoPeerOptions {
  size_t blocks = 1;
  uint64_t seed = 0;
  int timeout_s = 60;               // gives up (and exits) without the notification after this long
  size_t corrupt_block = SIZE_MAX;  // test hook: damage this block before checking
};

struct BenchGpuOptions {
  size_t max_mib = 256;  // largest transfer; sizes go 1, 4, 16, ... MiB up to it
  int iters = 200;       // repetitions at 4 MiB (as many bytes at every size, at least 2 x depth)
  size_t chunk_bytes = 4 << 20;  // staged path: bounce buffer size
  size_t bounce_buffers = 8;     // staged path: buffers per direction
  int depth = 4;                 // requests (and ceiling copies) kept in flight; 1: one at a time
  size_t cuda_streams = 4;       // the initiator's CUDA backend: streams per device
  bool polling = false;          // the initiator polls (no progress thread)
  int lat_iters = 200;           // latency section: timed runs per size
  bool json = false;             // one JSON document on stdout instead of the tables
  bool check = false;            // exit 1 when a row's ratio is below its target
  std::string target;            // internal: "ipc" or "staged" serves as the peer process
};

struct InfoOptions {
  std::filesystem::path dir;  // where to test O_DIRECT; empty: the temp dir
  bool json = false;          // one JSON object on stdout instead of the table
};

int run_info(const InfoOptions& options);
int run_bench_gpu(const BenchGpuOptions& options);
int run_demo(const DemoOptions& options);
int run_demo_peer(const DemoPeerOptions& options);

// A subcommand that adds itself to a CLI11 group: once parsed, its callback sets the
// runner, which main() calls. Options live in the runner's capture.
using Runner = std::function<int()>;

// `kvbm bench transfer`: scattered block copies against each path's ceiling.
void add_bench_transfer(CLI::App& bench, Runner& runner);

// `kvbm bench xfer` (and its hidden target process, `kvbm bench xfer-target`).
void add_bench_xfer(CLI::App& bench, Runner& runner);

// `kvbm bench gpu` (and its hidden target mode).
void add_bench_gpu(CLI::App& bench, Runner& runner);

// `kvbm bench file`: DRAM (and VRAM) <-> FILE through the agent against raw io_uring and dd.
void add_bench_file(CLI::App& bench, Runner& runner);
// `kvbm bench pool`: the block manager (match latency, register rate, bookkeeping bytes,
// offload/onboard next to the engine's own copy).
void add_bench_pool(CLI::App& bench, Runner& runner);

// `kvbm bench soak`: random requests both ways with a peer killed and restarted at random;
// every byte checked.
void add_bench_soak(CLI::App& bench, Runner& runner);

// `kvbm bench prepared`: requests over prepared descriptor lists against descriptor lists.
void add_bench_prepared(CLI::App& bench, Runner& runner);

}  // namespace kvbm::tools
