// The UCX context, worker and endpoints that the UCX and CUDA backends each keep (one
// worker per backend), opened and closed the same way. Thread safety: the caller holds
// the lock that serializes its worker (UCS_THREAD_MODE_SERIALIZED).
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// A context with `features` (UCP_FEATURE_*) and one serialized worker on it; `address`
// gets the worker's packed address. Internal errors name the UCX call. On failure, what
// was made is left in *context / *worker for the caller's destructor to release.
Status open_worker(uint64_t features, ucp_context_h* context, ucp_worker_h* worker,
                   std::string* address);

// Receives active messages `id` whole (UCP_AM_FLAG_WHOLE_MSG) in `cb(arg, ...)`.
Status set_am_handler(ucp_worker_h worker, unsigned id, ucp_am_recv_callback_t cb, void* arg);

// An endpoint to the worker whose packed address is `address`; errors on it go to
// `on_error(arg, ep, status)` when `peer_errors` (UCX reports failed peers only in that
// mode, which shared-memory transports do not support).
ucs_status_t open_endpoint(ucp_worker_h worker, std::string_view address, bool peer_errors,
                           ucp_err_handler_cb_t on_error, void* arg, ucp_ep_h* ep);

// Closes `ep` at once (a forced close does not wait for the peer) and progresses the
// worker until UCX has let it go, for a bounded number of rounds.
void close_endpoint(ucp_worker_h worker, ucp_ep_h ep);

}  // namespace kvbm::xfer::detail
