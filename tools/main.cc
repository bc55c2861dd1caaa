// kvbm: the command-line front end of the library.
#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvbm: store and move LLM KV-cache blocks across GPU, host, files and peers"};
  app.require_subcommand(1);

  kvbm::tools::DemoOptions demo;
  size_t demo_mib = 64;
  auto* demo_cmd = app.add_subcommand(
      "demo",
      "KV blocks offloaded GPU -> pinned -> disk, onboarded back, shipped to a peer process "
      "over loopback; every block verified, every path next to its ceiling");
  demo_cmd->add_option("--dir", demo.dir, "Directory for disk storage (default: a fresh temp dir)");
  demo_cmd->add_option("--mib", demo_mib, "MiB per tier, in 256 KiB blocks")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  demo_cmd->add_option("--transport", demo.transport, "UCX to the peer: tcp (loopback) or shm")
      ->capture_default_str()
      ->check(CLI::IsMember({"tcp", "shm"}));
  demo_cmd->add_option("--corrupt-block", demo.corrupt_block, "test: the peer damages this block")
      ->group("");

  // The demo's second process, started by `kvbm demo` itself; hidden from help.
  kvbm::tools::DemoPeerOptions peer;
  auto* peer_cmd = app.add_subcommand("demo-peer", "")->group("");
  peer_cmd->add_option("--blocks", peer.blocks, "Blocks to receive")
      ->required()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  peer_cmd->add_option("--seed", peer.seed, "Pattern seed")->required();
  peer_cmd->add_option("--timeout-s", peer.timeout_s, "Give up after this long")
      ->check(CLI::Range(1, 3600));
  peer_cmd->add_option("--corrupt-block", peer.corrupt_block, "test: damage this block");

  auto* info_cmd = app.add_subcommand("info", "Show what this machine offers kvbm");

  // `kvbm bench <what>`: each benchmark adds itself to the group and sets `runner`.
  kvbm::tools::Runner runner;
  auto* bench_cmd = app.add_subcommand("bench", "Measure bandwidth and latency");
  bench_cmd->require_subcommand(1);
  kvbm::tools::add_bench_transfer(*bench_cmd, runner);
  kvbm::tools::add_bench_xfer(*bench_cmd, runner);
  kvbm::tools::add_bench_pool(*bench_cmd, runner);
  kvbm::tools::BenchGpuOptions gpu;
  auto* gpu_cmd = bench_cmd->add_subcommand(
      "gpu", "VRAM through the agent: IPC, pinned DRAM, staged over UCX (skips without a GPU)");
  gpu_cmd->add_option("--max-mib", gpu.max_mib, "Largest transfer in MiB")
      ->check(CLI::Range(1, 8192));
  gpu_cmd->add_option("--iters", gpu.iters, "Repetitions at 4 MiB")->check(CLI::Range(1, 100000));
  gpu_cmd->add_option("--chunk-bytes", gpu.chunk_bytes, "Staged path: bounce buffer bytes")
      ->check(CLI::Range(4096, 1 << 30));
  gpu_cmd->add_option("--bounce-buffers", gpu.bounce_buffers, "Staged path: buffers per direction")
      ->check(CLI::Range(1, 1024));
  gpu_cmd
      ->add_option("--depth", gpu.depth,
                   "Requests kept in flight (and copies, for the ceilings); 1: one at a time")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  gpu_cmd->add_option("--cuda-streams", gpu.cuda_streams, "CUDA streams per device (initiator)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  gpu_cmd->add_flag("--polling", gpu.polling,
                    "The initiator's agent has no progress thread: requests poll the backends");
  gpu_cmd->add_option("--lat-iters", gpu.lat_iters, "Latency section: timed runs per size")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  gpu_cmd->add_option("--target", gpu.target, "internal: serve as the peer process")
      ->check(CLI::IsMember({"ipc", "staged"}))
      ->group("");

  CLI11_PARSE(app, argc, argv);
  if (*gpu_cmd) return kvbm::tools::run_bench_gpu(gpu);
  if (*demo_cmd) {
    demo.bytes = demo_mib << 20;
    return kvbm::tools::run_demo(demo);
  }
  if (*peer_cmd) return kvbm::tools::run_demo_peer(peer);
  if (*info_cmd) return kvbm::tools::run_info();
  if (runner) return runner();
  return 1;
}
