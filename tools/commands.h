// The subcommands of `kvbm`; each returns the process exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <string>

namespace kvbm::tools {

struct DemoOptions {
  std::filesystem::path dir;  // where Disk storage goes; empty: a fresh temp dir
  size_t bytes = 64 << 20;    // per tier
};

int run_info();
int run_demo(const DemoOptions& options);

// A subcommand that adds itself to a CLI11 group: once parsed, its callback sets the
// runner, which main() calls. Options live in the runner's capture.
using Runner = std::function<int()>;

// `kvbm bench transfer`: scattered block copies against each path's ceiling.
void add_bench_transfer(CLI::App& bench, Runner& runner);

// `kvbm bench xfer` (and its hidden target process, `kvbm bench xfer-target`).
void add_bench_xfer(CLI::App& bench, Runner& runner);

}  // namespace kvbm::tools
