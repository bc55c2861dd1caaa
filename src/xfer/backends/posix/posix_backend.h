// The POSIX backend: this agent's own files (FILE regions: addr = file offset, dev_id = fd)
// to and from its host memory (DRAM), through io_uring (common/uring_batch.h). post() hands
// the request to the backend's worker thread, which batches every queued request into one
// io_uring run; poll() never blocks.
//
// Only transfers whose peer is the agent itself are served: fds mean nothing in another
// process. Peers' metadata still loads (their POSIX regions are just not reachable here).
// Notifications are delivered to the agent itself only.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: "queue_depth" (1..4096, default 64): io_uring operations in flight.
// InvalidArgument for a bad value or an unknown parameter; Io if io_uring cannot start.
Result<std::unique_ptr<Backend>> make_posix_backend(const BackendEnv& env,
                                                    const BackendParams& params);

}  // namespace kvbm::xfer::detail
