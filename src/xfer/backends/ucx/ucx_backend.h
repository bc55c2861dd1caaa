// The UCX backend: host memory (DRAM) within and across processes and hosts, over
// whatever UCX selects (shared memory, CMA, TCP, verbs; UCX_TLS and UCX_NET_DEVICES are
// honoured). Regions are ucp_mem_map'ed and published as packed remote keys; READ and
// WRITE are ucp_get/put followed by an endpoint flush; notifications are active messages
// sent after the flush, so they arrive after the data is visible.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: none yet (UCX reads its own UCX_* environment).
Result<std::unique_ptr<Backend>> make_ucx_backend(const BackendEnv& env,
                                                  const BackendParams& params);

}  // namespace kvbm::xfer::detail
