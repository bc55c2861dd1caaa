// The kvbm command's child processes: common/subprocess.h's Subprocess, started so that it
// never outlives us: it dies with the spawning thread and leads a process group of its own
// that our SIGINT/SIGTERM handler kills (tools/cleanup.h).
#pragma once

#include <string>
#include <vector>

#include "common/subprocess.h"

namespace kvbm::tools {

using detail::find_program;
using detail::Subprocess;

// Subprocess::spawn with die_with_parent and the signal handler's registration set (the
// handler is installed first if it is not yet). Errors as Subprocess::spawn's.
Result<Subprocess> spawn_child(const std::vector<std::string>& argv, Subprocess::Options options);

}  // namespace kvbm::tools
