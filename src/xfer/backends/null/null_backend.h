// The NULL backend: the smallest backend that keeps the contract (../README.md), and the
// example to copy when adding one. It registers host memory (DRAM), moves bytes between
// regions of this agent only (READ and WRITE by memcpy, within post()), and delivers
// notifications to this agent only. Peers' metadata loads, but their regions are not
// reachable through it (Unsupported). Not created by default: name it in
// AgentConfig::backends or create_backend("NULL"). No parameters.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// InvalidArgument for any parameter (it has none).
Result<std::unique_ptr<Backend>> make_null_backend(const BackendEnv& env,
                                                   const BackendParams& params);

}  // namespace kvbm::xfer::detail
