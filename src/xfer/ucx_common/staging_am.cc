#include "xfer/ucx_common/staging_am.h"

#include <memory>

namespace kvbm::xfer::detail::staging {

Message request(const ChunkRequest& h) {
  Message m;
  m.header = encode(h);
  return m;
}

Message poll(const ChunkPoll& h) {
  Message m;
  m.header = encode(h);
  return m;
}

Message reply(const ChunkReply& h, std::string error_text) {
  Message m;
  m.header = encode(h);
  if (error_text.size() > kMaxErrorBytes) error_text.resize(kMaxErrorBytes);
  m.error_text = std::move(error_text);
  return m;
}

void receive(ucp_worker_h worker, void* desc, void* buf, size_t len, Pending* op) {
  op->pending = true;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.user_data = op;
  p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user) {
    auto* o = static_cast<Pending*>(user);
    o->pending = false;
    o->status = status;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker, desc, buf, len, &p);
  if (!UCS_PTR_IS_PTR(r)) {
    op->pending = false;
    op->status = UCS_PTR_STATUS(r);
  }
}

void send(ucp_ep_h ep, unsigned id, Message m, const void* body, size_t len, uint32_t flags) {
  auto ctx = std::make_unique<Message>(std::move(m));
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = flags;
  p.user_data = ctx.get();
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    std::unique_ptr<Message> c(static_cast<Message*>(user));
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

void send_poll(Polls& polls, ucp_ep_h ep, uint64_t token, unsigned poll_id) {
  Message m = poll({token});
  m.done = [&polls, token](ucs_status_t s) {
    if (s != UCS_OK) polls.failed(token);
  };
  send(ep, poll_id, std::move(m), nullptr, 0, UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY);
}

void answer_poll(OwedReplies& owed, ucp_ep_h ep, uint64_t token, unsigned reply_id,
                 uint32_t flags) {
  const size_t sent = owed.answer(ep, token, [&](OwedReplies::Reply&& r) {
    Message m = reply(r.h, std::move(r.error_text));
    const char* body = r.bytes.get();
    m.keep = std::move(r.bytes);  // back to its pool once sent
    send(ep, reply_id, std::move(m), body, r.len, flags);
  });
  send(ep, reply_id, reply({token, sent, std::nullopt, false, true}), nullptr, 0,
       UCP_AM_SEND_FLAG_EAGER);
}

}  // namespace kvbm::xfer::detail::staging
