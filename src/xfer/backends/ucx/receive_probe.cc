#include "xfer/backends/ucx/receive_probe.h"

#include <cstring>
#include <string>

#include "kvbm/log.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::ucx {

ucs_status_t ReceiveProbe::on_probe(void* arg, const void* header, size_t header_length,
                                    void* /*data*/, size_t /*length*/,
                                    const ucp_am_recv_param_t* /*param*/) {
  auto* self = static_cast<ReceiveProbe*>(arg);
  uint64_t token = 0;
  if (header_length == sizeof token) {
    std::memcpy(&token, header, sizeof token);
    if (token > self->seen_ && token <= self->sent_) self->seen_ = token;
  }
  return UCS_OK;
}

bool ReceiveProbe::blocked(ucp_context_h context, ucp_worker_h worker, std::string_view address,
                           std::chrono::milliseconds patience) {
  ucp_worker_h prober = nullptr;
  std::string unused;
  ucp_ep_h ep = nullptr;
  auto cannot_tell = [&](const std::string& why) {
    log(LogLevel::Warn, "UCX: the receive queue probe failed (" + why + ")");
    if (ep != nullptr) close_endpoint(prober, ep);
    if (prober != nullptr) ucp_worker_destroy(prober);
    return false;
  };
  if (auto st = create_worker(context, &prober, &unused); !st)
    return cannot_tell(st.error().message);
  if (ucs_status_t s = open_endpoint(prober, address, false, nullptr, nullptr, &ep); s != UCS_OK) {
    ep = nullptr;
    return cannot_tell(ucs_status_string(s));
  }
  const uint64_t token = ++sent_;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  ucs_status_ptr_t r = ucp_am_send_nbx(ep, kReceiveProbeAmId, &token, sizeof token, nullptr, 0, &p);
  if (UCS_PTR_IS_ERR(r)) return cannot_tell(ucs_status_string(UCS_PTR_STATUS(r)));
  const auto until = std::chrono::steady_clock::now() + patience;
  while (seen_ != token && std::chrono::steady_clock::now() < until) {
    ucp_worker_progress(prober);
    ucp_worker_progress(worker);
  }
  // Released by UCX once the forced close below ends it.
  if (UCS_PTR_IS_PTR(r)) ucp_request_free(r);
  close_endpoint(prober, ep);
  ucp_worker_destroy(prober);
  return seen_ != token;
}

}  // namespace kvbm::xfer::detail::ucx
