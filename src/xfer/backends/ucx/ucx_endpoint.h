// Opening and closing the UCX endpoints the UCX and CUDA backends keep to their peers
// (each backend has its own worker). Thread safety: the caller holds the lock that
// serializes its worker (both workers are UCS_THREAD_MODE_SERIALIZED).
#pragma once

#include <ucp/api/ucp.h>

#include <string_view>

namespace kvbm::xfer::detail {

// An endpoint to the worker whose packed address is `address`; errors on it go to
// `on_error(arg, ep, status)` when `peer_errors` (UCX reports failed peers only in that
// mode, which shared-memory transports do not support).
ucs_status_t open_endpoint(ucp_worker_h worker, std::string_view address, bool peer_errors,
                           ucp_err_handler_cb_t on_error, void* arg, ucp_ep_h* ep);

// Closes `ep` at once (a forced close does not wait for the peer) and progresses the
// worker until UCX has let it go, for a bounded number of rounds.
void close_endpoint(ucp_worker_h worker, ucp_ep_h ep);

}  // namespace kvbm::xfer::detail
