// The subcommands of `kvbm`; each returns the process exit code.
#pragma once

#include <filesystem>
#include <string>

namespace kvbm::tools {

struct DemoOptions {
  std::filesystem::path dir;  // where Disk storage goes; empty: a fresh temp dir
  size_t bytes = 64 << 20;    // per tier
};

int run_info();
int run_demo(const DemoOptions& options);

}  // namespace kvbm::tools
