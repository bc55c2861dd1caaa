#include "xfer/backends/ucx/am_rma.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/hex.h"
#include "kvbm/log.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"
#include "xfer/backends/ucx/worker_address.h"

namespace kvbm::xfer::detail::ucx {
namespace {

const char* op_name(Op op) {
  return op == Op::Write ? "WRITE" : "READ";
}

// Statuses with which UCX ends operations on an endpoint that failed or is closing: the
// endpoint may be going away, so nothing more is sent on it.
bool endpoint_gone(ucs_status_t s) {
  return s == UCS_ERR_CANCELED || s == UCS_ERR_CONNECTION_RESET || s == UCS_ERR_ENDPOINT_TIMEOUT ||
         s == UCS_ERR_UNREACHABLE || s == UCS_ERR_NOT_CONNECTED;
}

}  // namespace

Result<RmaMode> parse_rma_mode(std::string_view value) {
  if (value == "auto") return RmaMode::Auto;
  if (value == "native") return RmaMode::Native;
  if (value == "am") return RmaMode::Am;
  return err(ErrorCode::InvalidArgument, "UCX parameter rma = '", value,
             "': expected auto, native or am");
}

bool native_rma_reaches(std::string_view peer_address, const UcxWireShape& ours) {
  if (!ours.address_walks) return true;
  auto peer = parse_worker_address(peer_address);
  if (!peer) return true;
  static const uint16_t kRdma[] = {transport_checksum("rc_verbs"), transport_checksum("rc_mlx5"),
                                   transport_checksum("dc_mlx5")};
  static const uint16_t kXpmem = transport_checksum("xpmem");
  for (const UcxAddressEntry& e : peer->entries) {
    const bool rdma =
        std::find(std::begin(kRdma), std::end(kRdma), e.tl_checksum) != std::end(kRdma);
    const bool xpmem = e.tl_checksum == kXpmem && !ours.machine.empty() && e.device == ours.machine;
    if (!rdma && !xpmem) continue;
    if (std::any_of(ours.transports.begin(), ours.transports.end(),
                    [&](const UcxTransportShape& t) { return t.checksum == e.tl_checksum; })) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- target side

void AmRma::serve(uint64_t addr, uint64_t len) {
  served_.emplace(addr, Served{len});
  longest_served_ = std::max(longest_served_, len);
}

bool AmRma::unserve(uint64_t addr, uint64_t len) {
  auto [first, last] = served_.equal_range(addr);
  // A region already stopped (a second call), else the live one.
  auto it =
      std::find_if(first, last, [&](auto& e) { return e.second.len == len && e.second.gone; });
  if (it == last) {
    it = std::find_if(first, last, [&](auto& e) { return e.second.len == len; });
  }
  if (it == last) return true;
  it->second.gone = true;
  if (it->second.busy != 0) return false;
  served_.erase(it);
  return true;
}

AmRma::Served* AmRma::find(uint64_t addr, uint64_t len) {
  // The regions that start at or below addr, nearest first; none that starts further
  // below than the longest region can hold it.
  for (auto it = served_.upper_bound(addr); it != served_.begin();) {
    --it;
    if (addr - it->first >= longest_served_) break;
    const Served& s = it->second;
    if (!s.gone && addr - it->first + len <= s.len) return &it->second;
  }
  return nullptr;
}

ucs_status_t AmRma::on_request(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<AmRma*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  const ucp_ep_h ep =
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr;
  const std::string_view h(static_cast<const char*>(header), header_length);
  auto rq = decode_am_rma_request(h, length, rndv);
  if (!rq || ep == nullptr) {
    const std::string why = rq ? "an RMA request without a reply endpoint" : rq.error().message;
    log(LogLevel::Warn, "UCX: refused a peer's " + why);
    auto id = am_rma_header_id(h, false);
    if (ep != nullptr && id) self->refuse(ep, *id, ErrorCode::Remote, "malformed request: " + why);
    return UCS_OK;  // rendezvous data not received is dropped
  }
  ++self->backend_.events_;
  self->handle_request(*rq, data, rndv, ep);
  return UCS_OK;
}

void AmRma::handle_request(const AmRmaRequest& rq, void* data, bool rndv, ucp_ep_h ep) {
  Served* region = find(rq.addr, rq.len);
  if (region == nullptr) {
    refuse(ep, rq.id, ErrorCode::OutOfBounds,
           "not inside memory agent '" + backend_.env_.agent_name + "' has registered");
    return;
  }
  char* at = reinterpret_cast<char*>(rq.addr);
  if (rq.op == Op::Read) {
    ReplySlot& s = new_reply_slot();
    encode(AmRmaReply{AmRmaReplyKind::Data, rq.id, rq.len}, s.header);
    s.region = region;
    ++region->busy;
    send(s, ep, at, rq.len);
    return;
  }
  if (!rndv) {
    std::memcpy(at, data, rq.len);
    ReplySlot& s = new_reply_slot();
    encode(AmRmaReply{AmRmaReplyKind::Ack, rq.id}, s.header);
    send(s, ep, nullptr, 0);
    return;
  }
  // The bytes come by rendezvous: UCX pulls them straight into place, then the ack goes.
  ReplySlot& s = new_reply_slot();
  s.region = region;
  ++region->busy;
  s.ep = ep;
  s.id = rq.id;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &AmRma::on_write_received;
  p.user_data = &s;
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(backend_.worker_, data, at, rq.len, &p);
  if (UCS_PTR_IS_PTR(r)) return;  // the callback acks
  ack_write(s, UCS_PTR_STATUS(r));
}

void AmRma::on_write_received(void* request, ucs_status_t status, size_t /*length*/, void* user) {
  auto* s = static_cast<ReplySlot*>(user);
  s->owner->ack_write(*s, status);
  ucp_request_free(request);
}

void AmRma::ack_write(ReplySlot& s, ucs_status_t status) {
  --s.region->busy;
  s.region = nullptr;
  const ucp_ep_h ep = s.ep;
  const uint64_t id = s.id;
  if (status == UCS_OK) {
    encode(AmRmaReply{AmRmaReplyKind::Ack, id}, s.header);
    send(s, ep, nullptr, 0);
    return;
  }
  free_reply_slot(s);
  if (endpoint_gone(status)) return;
  refuse(ep, id, ErrorCode::Remote,
         std::string("receiving the bytes failed: ") + ucs_status_string(status));
}

void AmRma::refuse(ucp_ep_h ep, uint64_t id, ErrorCode code, std::string text) {
  ReplySlot& s = new_reply_slot();
  s.text = std::move(text);
  if (s.text.size() > kMaxAmRmaErrorBytes) s.text.resize(kMaxAmRmaErrorBytes);
  AmRmaReply h{AmRmaReplyKind::Error, id};
  h.error = code;
  encode(h, s.header);
  send(s, ep, s.text.data(), s.text.size());
}

void AmRma::send(ReplySlot& s, ucp_ep_h ep, const void* body, size_t len) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  // Acks and errors are small; a READ's bytes go as UCX sees fit (rendezvous when large).
  p.flags = s.region == nullptr ? UCP_AM_SEND_FLAG_EAGER : 0;
  p.cb.send = &AmRma::on_reply_sent;
  p.user_data = &s;
  ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, kAmRmaReplyAmId, s.header, kAmRmaHeaderBytes, body, len, &p);
  if (UCS_PTR_IS_PTR(r)) return;
  reply_done(s, UCS_PTR_STATUS(r));
}

void AmRma::on_reply_sent(void* request, ucs_status_t status, void* user) {
  auto* s = static_cast<ReplySlot*>(user);
  s->owner->reply_done(*s, status);
  ucp_request_free(request);
}

void AmRma::reply_done(ReplySlot& s, ucs_status_t status) {
  if (status != UCS_OK && !endpoint_gone(status)) {
    log(LogLevel::Debug,
        std::string("UCX: an RMA reply was not sent: ") + ucs_status_string(status));
  }
  if (s.region != nullptr) --s.region->busy;
  free_reply_slot(s);
}

AmRma::ReplySlot& AmRma::new_reply_slot() {
  ReplySlot* s;
  if (free_replies_.empty()) {
    s = &replies_.emplace_back();
    s->owner = this;
  } else {
    s = free_replies_.back();
    free_replies_.pop_back();
  }
  s->used = true;
  return *s;
}

void AmRma::free_reply_slot(ReplySlot& s) {
  s.used = false;
  s.region = nullptr;
  s.ep = nullptr;
  s.text.clear();
  free_replies_.push_back(&s);
}

// ---------------------------------------------------------------- initiator side

void AmRma::post(Op op, UcxPeer& peer, PostState* c, const std::vector<AmSpan>& spans) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  // The target replies through the endpoint UCX hands it with the request.
  p.flags = UCP_AM_SEND_FLAG_REPLY | (op == Op::Read ? UCP_AM_SEND_FLAG_EAGER : 0);
  p.cb.send = &AmRma::on_request_sent;
  const bool write = op == Op::Write;
  for (const AmSpan& span : spans) {
    OpSlot& s = new_op_slot();
    s.op = op;
    s.c = c;
    s.local = span.local;
    s.remote = span.remote;
    s.len = span.len;
    encode(AmRmaRequest{op, op_id(s), span.remote, span.len}, s.header);
    p.user_data = &s;
    // Counted before the send: over the self transport the reply, and the send's own
    // completion, come inside it. (post()'s caller holds a count of its own, so no
    // decrement here completes the request.)
    s.wait = Wait::Reply;
    s.sending = true;
    c->ops_pending += 2;
    ucs_status_ptr_t r = ucp_am_send_nbx(peer.ep, kAmRmaRequestAmId, s.header, kAmRmaHeaderBytes,
                                         write ? span.local : nullptr, write ? span.len : 0, &p);
    if (UCS_PTR_IS_PTR(r)) continue;  // its callback ends the send and frees the request
    s.sending = false;
    --c->ops_pending;
    if (!UCS_PTR_IS_ERR(r)) {
      release_if_done(s);
      continue;
    }
    c->ops_status = UCS_PTR_STATUS(r);
    c->op_error =
        ucx_error(ErrorCode::Remote, std::string("sending an RMA ") + op_name(op), c->ops_status);
    // Nothing went out: no reply comes.
    if (s.wait == Wait::Reply) {
      resolve(s, c->ops_status);
    } else {
      release_if_done(s);
    }
    return;
  }
}

AmRma::OpSlot& AmRma::new_op_slot() {
  OpSlot* s;
  if (free_ops_.empty()) {
    s = &ops_.emplace_back();
    s->owner = this;
    s->index = static_cast<uint32_t>(ops_.size() - 1);
  } else {
    s = &ops_[free_ops_.back()];
    free_ops_.pop_back();
  }
  s->used = true;
  s->wait = Wait::Resolved;
  return *s;
}

uint64_t AmRma::op_id(const OpSlot& s) {
  return uint64_t{s.gen} << 32 | s.index;
}

AmRma::OpSlot* AmRma::op_of(uint64_t id) {
  const uint64_t index = id & 0xffffffffu;
  if (index >= ops_.size()) return nullptr;
  OpSlot& s = ops_[index];
  if (!s.used || s.gen != id >> 32) return nullptr;
  return &s;
}

void AmRma::on_request_sent(void* request, ucs_status_t status, void* user) {
  auto* s = static_cast<OpSlot*>(user);
  AmRma* self = s->owner;
  PostState* c = s->c;
  s->sending = false;
  if (status != UCS_OK && !c->op_error && !endpoint_gone(status)) {
    c->op_error =
        ucx_error(ErrorCode::Remote, std::string("sending an RMA ") + op_name(s->op), status);
  }
  self->release_if_done(*s);
  self->backend_.op_done(c, status);
  ucp_request_free(request);
}

ucs_status_t AmRma::on_reply(void* arg, const void* header, size_t header_length, void* data,
                             size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<AmRma*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  const std::string_view h(static_cast<const char*>(header), header_length);
  auto reply = decode_am_rma_reply(h, length, rndv);
  const auto id = reply ? std::optional<uint64_t>(reply->id) : am_rma_header_id(h, true);
  OpSlot* s = id ? self->op_of(*id) : nullptr;
  if (s == nullptr || s->wait != Wait::Reply) {
    // Not ours, or for an operation no longer waited for (cancelled): nothing is written.
    if (!reply) log(LogLevel::Warn, "UCX: dropped an RMA reply: " + reply.error().message);
    return UCS_OK;
  }
  ++self->backend_.events_;
  if (!reply) {
    self->resolve(*s, UCS_ERR_INVALID_PARAM, err(ErrorCode::Remote, reply.error().message));
    return UCS_OK;
  }
  self->handle_reply(*s, *reply, data, length, rndv);
  return UCS_OK;
}

void AmRma::handle_reply(OpSlot& s, const AmRmaReply& h, void* data, size_t length, bool rndv) {
  // Named only on failure: formatting costs more than a small operation.
  auto what = [&s] {
    return std::string(op_name(s.op)) + " of " + std::to_string(s.len) + " bytes at " +
           kvbm::detail::hex(s.remote);
  };
  switch (h.kind) {
    case AmRmaReplyKind::Error:
      return resolve(s, UCS_ERR_REJECTED,
                     err(h.error, what(),
                         " refused: ", std::string_view(static_cast<const char*>(data), length)));
    case AmRmaReplyKind::Ack:
      if (s.op != Op::Write) {
        return resolve(s, UCS_ERR_INVALID_PARAM,
                       err(ErrorCode::Remote, what(), " was acked as a WRITE"));
      }
      return resolve(s, UCS_OK);
    case AmRmaReplyKind::Data:
      break;
  }
  if (s.op != Op::Read || h.len != s.len) {
    return resolve(s, UCS_ERR_INVALID_PARAM,
                   err(ErrorCode::Remote, "the reply to a ", what(), " carries ", h.len, " bytes"));
  }
  if (!rndv) {
    std::memcpy(s.local, data, s.len);
    return resolve(s, UCS_OK);
  }
  // The bytes come by rendezvous: UCX pulls them straight into the destination.
  s.wait = Wait::Receiving;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &AmRma::on_read_received;
  p.user_data = &s;
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(backend_.worker_, data, s.local, s.len, &p);
  if (UCS_PTR_IS_PTR(r)) return;
  received(s, UCS_PTR_STATUS(r));
}

void AmRma::on_read_received(void* request, ucs_status_t status, size_t /*length*/, void* user) {
  auto* s = static_cast<OpSlot*>(user);
  s->owner->received(*s, status);
  ucp_request_free(request);
}

void AmRma::received(OpSlot& s, ucs_status_t status) {
  if (status == UCS_OK || endpoint_gone(status)) return resolve(s, status);
  resolve(s, status, ucx_error(ErrorCode::Remote, "receiving a READ's bytes", status));
}

void AmRma::resolve(OpSlot& s, ucs_status_t status, std::optional<Error> e) {
  PostState* c = s.c;
  s.wait = Wait::Resolved;
  if (e && !c->op_error) c->op_error = std::move(e);
  release_if_done(s);
  backend_.op_done(c, status);
}

void AmRma::release_if_done(OpSlot& s) {
  if (s.sending || s.wait != Wait::Resolved) return;
  s.used = false;
  s.c = nullptr;
  ++s.gen;
  free_ops_.push_back(s.index);
}

void AmRma::fail_peer(const UcxPeer& peer) {
  for (OpSlot& s : ops_) {
    if (s.used && s.wait == Wait::Reply && s.c->peer.get() == &peer) {
      resolve(s, UCS_ERR_CONNECTION_RESET);
    }
  }
}

void AmRma::worker_gone() {
  for (OpSlot& s : ops_) {
    if (!s.used) continue;
    PostState* c = s.c;
    const bool sending = std::exchange(s.sending, false);
    const bool waiting = s.wait != Wait::Resolved;
    s.wait = Wait::Resolved;
    release_if_done(s);
    // Each counted in c->ops_pending: the post ends with the last of them.
    if (sending) backend_.op_done(c, UCS_ERR_CONNECTION_RESET);
    if (waiting) backend_.op_done(c, UCS_ERR_CONNECTION_RESET);
  }
  for (ReplySlot& s : replies_) {
    if (!s.used) continue;
    if (s.region != nullptr) --s.region->busy;
    free_reply_slot(s);
  }
}

void AmRma::forget(PostState* c) {
  for (OpSlot& s : ops_) {
    if (s.used && s.wait == Wait::Reply && s.c == c) resolve(s, UCS_ERR_CANCELED);
  }
}

}  // namespace kvbm::xfer::detail::ucx
