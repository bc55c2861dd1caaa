// The UCX backend: host memory (DRAM) within and across processes and hosts, over
// whatever UCX selects (shared memory, CMA, TCP, verbs; UCX_TLS and UCX_NET_DEVICES are
// honoured). Regions are ucp_mem_map'ed and published as packed remote keys; READ and
// WRITE are ucp_get/put followed by an endpoint flush; notifications are active messages
// sent after the flush, so they arrive after the data is visible.
//
// Remote files: FILE regions registered here are served to peers (file_server.h), and a
// peer's FILE regions are reached through their owner: each chunk (file_wire.h) is an
// active message answered by the owner's progress, which reads into or writes from a
// bounded staging buffer. The notification follows the last chunk's reply, so it arrives
// once a WRITE is in the file. This agent's own files stay with POSIX.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: none yet (UCX reads its own UCX_* environment).
Result<std::unique_ptr<Backend>> make_ucx_backend(const BackendEnv& env,
                                                  const BackendParams& params);

}  // namespace kvbm::xfer::detail
