// The UCX backend's notifications: sent as active messages after a request's data is
// complete at the target (so they arrive after it), received in order per sender
// (notifications.h).
#include "kvbm/log.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"

namespace kvbm::xfer::detail::ucx {

void UcxBackend::finish(PostState* c, ucs_status_t status) {
  if (status != UCS_OK) {
    fail(c, ucx_error(ErrorCode::Remote, "notification to agent '" + c->peer->name + "'", status));
    return;
  }
  c->state.store(XferState::Done, std::memory_order_release);
  ++events_;
}

// The data of a request is complete at the target (the flush returned): now, and only
// now, its notification goes out.
void UcxBackend::data_complete(const std::shared_ptr<PostState>& c, ucs_status_t status) {
  if (status != UCS_OK && c->op_error) {
    fail(c.get(), err(c->op_error->code, "transfer with agent '", c->peer->name,
                      "' failed: ", c->op_error->message));
    return;
  }
  if (status != UCS_OK) {
    const char* what =
        c->peer->failure ? c->peer->failure->message.c_str() : ucs_status_string(status);
    fail(c.get(),
         err(ErrorCode::Remote, "transfer with agent '", c->peer->name, "' failed: ", what));
    return;
  }
  if (c->cancelled || !c->notification->has_value()) {
    finish(c.get(), UCS_OK);
    return;
  }
  if (auto st = send_am(*c->peer, **c->notification, c); !st) fail(c.get(), st.error());
}

Status UcxBackend::send_am(UcxPeer& peer, std::string_view message, std::shared_ptr<PostState> c) {
  if (peer.failure || peer.ep == nullptr) {
    return err(ErrorCode::Remote, "agent '", peer.name,
               "': ", peer.failure ? peer.failure->message : "not connected");
  }
  c->notif_buffer = encode_notif_header(env_.agent_name, peer.connection, peer.next_seq++);
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.user_data = new std::shared_ptr<PostState>(c);
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    auto* holder = static_cast<std::shared_ptr<PostState>*>(user);
    (*holder)->backend->finish(holder->get(), status);
    delete holder;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r = ucp_am_send_nbx(peer.ep, kNotifAmId, c->notif_buffer.data(),
                                       c->notif_buffer.size(), message.data(), message.size(), &p);
  if (UCS_PTR_IS_PTR(r)) return {};  // the callback finishes, and frees the request
  delete static_cast<std::shared_ptr<PostState>*>(p.user_data);
  if (UCS_PTR_IS_ERR(r))
    return ucx_error(ErrorCode::Remote, "ucp_am_send_nbx to agent '" + peer.name + "'",
                     UCS_PTR_STATUS(r));
  finish(c.get(), UCS_OK);
  return {};
}

Status UcxBackend::send_notification(const std::string& agent, std::string_view message) {
  if (message.size() > kMaxNotifBytes) {
    return err(ErrorCode::InvalidArgument, "notification of ", message.size(), " bytes exceeds ",
               kMaxNotifBytes);
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
  auto c = std::make_shared<PostState>();
  c->backend = this;
  c->peer = it->second;
  c->owned = std::string(message);  // alive until the send completes, with the completion
  c->notification = &c->owned;
  return send_am(*it->second, *c->owned, c);
}

ucs_status_t UcxBackend::on_am(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxBackend*>(arg);
  auto n = decode_notif_header(std::string_view(static_cast<const char*>(header), header_length),
                               length, (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0);
  if (!n) {
    log(LogLevel::Warn, "UCX: dropped a " + n.error().message);
    return UCS_OK;
  }
  if (self->inbox_.deliver(n->h, std::move(n->sender),
                           std::string(static_cast<const char*>(data), length),
                           self->env_.on_notification)) {
    ++self->events_;
  }
  return UCS_OK;
}

}  // namespace kvbm::xfer::detail::ucx
