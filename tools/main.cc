// kvbm: the command-line front end of the library.
#include <CLI/CLI.hpp>

#include "cleanup.h"
#include "commands.h"
#include "kvbm/log.h"
#include "kvbm/version.h"
#include "options.h"
#include "serve.h"

namespace kvbm::tools {
namespace {

void add_demo(CLI::App& app, Runner& runner) {
  auto demo = std::make_shared<DemoOptions>();
  auto mib = std::make_shared<size_t>(64);
  auto* cmd = app.add_subcommand(
      "demo",
      "KV blocks offloaded GPU -> pinned -> disk, onboarded back, shipped to a peer process "
      "over loopback; every block verified, every path next to its ceiling");
  cmd->add_option("--dir", demo->dir, "Directory for disk storage (default: a fresh temp dir)");
  add_size_option(*cmd, "--mib", *mib, "MiB per tier, in 256 KiB blocks", 1, size_t{1} << 16,
                  size_t{1} << 20);
  cmd->add_option("--transport", demo->transport, "UCX to the peer: tcp (loopback) or shm")
      ->capture_default_str()
      ->check(CLI::IsMember({"tcp", "shm"}));
  cmd->add_option("--corrupt-block", demo->corrupt_block, "test: the peer damages this block")
      ->group("");
  cmd->add_flag("--json", demo->json,
                "One JSON document on stdout: machine, versions, options, every path's row with "
                "its ceiling, the prefix-reuse act, the verdict");
  cmd->callback([demo, mib, &runner] {
    runner = [demo, mib] {
      demo->bytes = *mib << 20;
      return run_demo(*demo);
    };
  });

  // The demo's second process, started by `kvbm demo` itself; hidden from help.
  auto peer = std::make_shared<DemoPeerOptions>();
  auto* peer_cmd = app.add_subcommand("demo-peer", "")->group("");
  peer_cmd->add_option("--blocks", peer->blocks, "Blocks to receive")
      ->required()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  peer_cmd->add_option("--seed", peer->seed, "Pattern seed")->required();
  peer_cmd->add_option("--timeout-s", peer->timeout_s, "Give up after this long")
      ->check(CLI::Range(1, 3600));
  peer_cmd->add_option("--corrupt-block", peer->corrupt_block, "test: damage this block");
  peer_cmd->callback([peer, &runner] { runner = [peer] { return run_demo_peer(*peer); }; });
}

void add_info(CLI::App& app, Runner& runner) {
  auto o = std::make_shared<InfoOptions>();
  auto* cmd = app.add_subcommand("info", "Show what this machine offers kvbm");
  cmd->add_option("--dir", o->dir, "Directory whose O_DIRECT support to test (default: temp dir)")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--json", o->json,
                "One JSON object on stdout: {\"kvbm\": version, \"items\": {...}}");
  cmd->callback([o, &runner] { runner = [o] { return run_info(*o); }; });
}

}  // namespace
}  // namespace kvbm::tools

int main(int argc, char** argv) {
  using namespace kvbm::tools;
  install_signal_cleanup();  // Ctrl-C leaves no scratch files and no child processes
  (void)kvbm::log_level();   // reads KVBM_LOG now, so a bad value is reported on every run
  CLI::App app{"kvbm: store and move LLM KV-cache blocks across GPU, host, files and peers"};
  app.footer("Exit status: 0 on success, 1 when a run fails, " + std::to_string(kUsageError) +
             " for a usage error.");
  app.set_version_flag("--version", std::string("kvbm ") + kvbm::version());
  app.require_subcommand(1);

  Runner runner;
  add_demo(app, runner);
  add_info(app, runner);
  // `kvbm bench <what>`: each benchmark adds itself to the group and sets `runner`.
  auto* bench = app.add_subcommand("bench", "Measure bandwidth and latency");
  bench->require_subcommand(1);
  add_bench_transfer(*bench, runner);
  add_bench_xfer(*bench, runner);
  add_bench_gpu(*bench, runner);
  add_bench_file(*bench, runner);
  add_bench_pool(*bench, runner);
  add_bench_soak(*bench, runner);
  add_serve(app, runner);  // `kvbm serve`: a target agent for other hosts (serve.h)
  add_bench_prepared(*bench, runner);
  return run_command_line(app, argc, argv, runner);
}
