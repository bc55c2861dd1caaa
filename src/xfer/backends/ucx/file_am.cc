#include "xfer/backends/ucx/file_am.h"

namespace kvbm::xfer::detail::ucx {

void send_file_am(ucp_ep_h ep, unsigned id, std::unique_ptr<FileSendCtx> ctx, const void* body,
                  size_t len, bool reply_ep) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER | (reply_ep ? UCP_AM_SEND_FLAG_REPLY : 0);
  p.user_data = ctx.get();
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    std::unique_ptr<FileSendCtx> c(static_cast<FileSendCtx*>(user));
    if (c->done) c->done(status);
    ucp_request_free(request);
  };
  if (!ctx->error_text.empty()) {
    body = ctx->error_text.data();
    len = ctx->error_text.size();
  }
  ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, id, ctx->header.data(), ctx->header.size(), body, len, &p);
  if (UCS_PTR_IS_PTR(r)) {
    (void)ctx.release();  // the callback owns it now
    return;
  }
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
}

}  // namespace kvbm::xfer::detail::ucx
