// kvbm: the command-line front end of the library.
#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvbm: store and move LLM KV-cache blocks across GPU, host, files and peers"};
  app.require_subcommand(1);

  kvbm::tools::DemoOptions demo;
  size_t demo_mib = 64;
  auto* demo_cmd =
      app.add_subcommand("demo", "Move a known pattern through every tier and verify it");
  demo_cmd->add_option("--dir", demo.dir, "Directory for disk storage (default: a fresh temp dir)");
  demo_cmd->add_option("--mib", demo_mib, "MiB per tier")->check(CLI::Range(1, 1 << 16));

  auto* info_cmd = app.add_subcommand("info", "Show what this machine offers kvbm");

  // `kvbm bench <what>`: each benchmark adds itself to the group and sets `runner`.
  kvbm::tools::Runner runner;
  auto* bench_cmd = app.add_subcommand("bench", "Measure bandwidth and latency");
  bench_cmd->require_subcommand(1);
  kvbm::tools::add_bench_transfer(*bench_cmd, runner);
  kvbm::tools::add_bench_xfer(*bench_cmd, runner);

  CLI11_PARSE(app, argc, argv);
  if (*demo_cmd) {
    demo.bytes = demo_mib << 20;
    return kvbm::tools::run_demo(demo);
  }
  if (*info_cmd) return kvbm::tools::run_info();
  if (runner) return runner();
  return 1;
}
