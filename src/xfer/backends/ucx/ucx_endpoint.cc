#include "xfer/backends/ucx/ucx_endpoint.h"

#include <string>

namespace kvbm::xfer::detail {

ucs_status_t open_endpoint(ucp_worker_h worker, std::string_view address, bool peer_errors,
                           ucp_err_handler_cb_t on_error, void* arg, ucp_ep_h* ep) {
  std::string copy(address);  // UCX reads the address as a struct: give it aligned storage
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.address = reinterpret_cast<const ucp_address_t*>(copy.data());
  p.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  p.err_handler.cb = on_error;
  p.err_handler.arg = arg;
  return ucp_ep_create(worker, &p, ep);
}

void close_endpoint(ucp_worker_h worker, ucp_ep_h ep) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  if (UCS_PTR_IS_PTR(req)) {
    // A forced close completes within a few progress calls.
    for (int i = 0; i < 100000 && ucp_request_check_status(req) == UCS_INPROGRESS; ++i) {
      ucp_worker_progress(worker);
    }
    ucp_request_free(req);
  }
}

}  // namespace kvbm::xfer::detail
