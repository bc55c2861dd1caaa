// The staged path of the CUDA backend (see cuda_backend.h): chunks of a transfer go
// through pools of pinned bounce buffers and UCX active messages on the backend's own
// worker. Initiator: pump() starts chunks while buffers are free; advance() moves each
// one on (device copy -> send -> ack for WRITE; ask -> receive -> device copy for READ).
// The target's side is staged_target.cc.
#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {

CudaStagedRequest::~CudaStagedRequest() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (!current_ || current_->state.load() != XferState::InProgress) return;
  current_->cancelled = true;
  // Copies into local memory cannot be cancelled: wait for them; the backend drains the rest.
  for (auto& [seq, f] : current_->flights) {
    if (f.event != nullptr) {
      DeviceGuard g(f.event_device);
      cudaEventSynchronize(f.event);
    }
  }
  backend_->fail_op(*current_, err(ErrorCode::Cancelled, "request destroyed in flight"));
}

Status CudaStagedRequest::post() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (current_ && current_->state.load() == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "CUDA request is already in progress");
  }
  if (peer_->failure)
    return err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message);
  KVBM_TRY(backend_->ensure_pools());
  auto op = std::make_shared<StagedOp>();
  op->id = backend_->next_op_++;
  op->op = op_;
  op->peer = peer_;
  op->chunks = chunks_;
  backend_->ops_[op->id] = op;
  current_ = op;
  backend_->pump(*op);
  return {};
}

Error CudaStagedRequest::error() const {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  return current_ ? current_->error : err(ErrorCode::Internal, "not posted");
}

Status CudaBackend::ensure_pools() {
  if (pools_ready_) return {};
  DeviceGuard g(default_device_);
  KVBM_TRY(send_pool_.init(slots_, chunk_bytes_));
  KVBM_TRY(recv_pool_.init(slots_, chunk_bytes_));
  pools_ready_ = true;
  return {};
}

struct SendCtx {
  std::string header;
  std::function<void(ucs_status_t)> done;
};

void CudaBackend::send_am(ucp_ep_h ep, unsigned id, std::string header, const void* data,
                          size_t len, std::function<void(ucs_status_t)> done) {
  auto* ctx = new SendCtx{std::move(header), std::move(done)};
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.user_data = ctx;
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    auto* c = static_cast<SendCtx*>(user);
    if (c->done) c->done(status);
    delete c;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, id, ctx->header.data(), ctx->header.size(), data, len, &p);
  if (UCS_PTR_IS_PTR(r)) return;
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
  delete ctx;
}

void CudaBackend::reply(ucp_ep_h ep, unsigned id, uint64_t op, uint64_t seq, const Error* e,
                        const void* data, size_t len, std::function<void(ucs_status_t)> done) {
  ReplyHeader h{kChunkMagic, e ? static_cast<int32_t>(e->code) : -1, op, seq};
  std::shared_ptr<std::string> text;  // an error's message, alive until the send completes
  if (e != nullptr) {
    text = std::make_shared<std::string>(e->message.substr(0, kMaxErrorBytes));
    data = text->data();
    len = text->size();
  }
  send_am(ep, id, encode(h), data, len, [text, done = std::move(done)](ucs_status_t s) {
    if (done) done(s);
  });
}

void CudaBackend::fail_op(StagedOp& op, Error e) {
  if (op.state.load() != XferState::InProgress) return;
  op.error = std::move(e);
  op.state.store(XferState::Error, std::memory_order_release);
  ++events_;
}

// Starts chunks while bounce buffers are free.
void CudaBackend::pump(StagedOp& op) {
  const auto& chunks = *op.chunks;
  while (op.state.load() == XferState::InProgress && op.next < chunks.size()) {
    void* slot = send_pool_.acquire();
    if (slot == nullptr) return;
    const uint64_t seq = op.next++;
    const StagedChunk& c = chunks[seq];
    Flight& f = op.flights[seq];
    f.seq = seq;
    f.slot = slot;
    if (op.op == Op::Write) {
      f.phase = Phase::WriteCopying;
      f.event_device = c.device;
      if (auto st = copy_async(slot, reinterpret_cast<const void*>(c.local), c.len, c.device,
                               stream(c.device), &f.event);
          !st) {
        fail_op(op, st.error());
      }
    } else {
      f.phase = Phase::ReadAwaitReply;
      ChunkHeader h{
          kChunkMagic, static_cast<uint32_t>(c.remote_type), op.id, seq, c.remote_dev, c.remote,
          c.len};
      send_am(op.peer->ep, kAmGet, encode(h), nullptr, 0, nullptr);
    }
  }
}

// Moves one chunk on; true when it is finished (successfully or not) and can be erased.
bool CudaBackend::advance(StagedOp& op, Flight& f) {
  for (;;) {
    if (f.event != nullptr) {
      cudaError_t e = cudaEventQuery(f.event);
      if (e == cudaErrorNotReady) return false;
      cudaEventDestroy(f.event);
      f.event = nullptr;
      if (e != cudaSuccess) fail_op(op, cuda_fail(ErrorCode::Internal, e, "staged CUDA copy"));
    }
    if (f.ucx_pending) return false;
    if (op.state.load() != XferState::InProgress) {
      send_pool_.release(f.slot);
      return true;
    }
    const StagedChunk& ch = (*op.chunks)[f.seq];
    switch (f.phase) {
      case Phase::WriteCopying: {
        f.phase = Phase::WriteSending;
        f.ucx_pending = true;
        Flight* fp = &f;
        ChunkHeader h{kChunkMagic,   static_cast<uint32_t>(ch.remote_type),
                      op.id,         f.seq,
                      ch.remote_dev, ch.remote,
                      ch.len};
        send_am(op.peer->ep, kAmPut, encode(h), f.slot, ch.len, [fp](ucs_status_t s) {
          fp->ucx_pending = false;
          fp->ucx_status = s;
        });
        continue;
      }
      case Phase::WriteSending:
        send_pool_.release(f.slot);
        f.slot = nullptr;
        if (f.ucx_status != UCS_OK) {
          fail_op(op, ucx_error(ErrorCode::Remote, "staged WRITE to agent '" + op.peer->name + "'",
                                f.ucx_status));
          return true;
        }
        f.phase = Phase::WriteAwaitAck;
        continue;
      case Phase::WriteAwaitAck:
        if (!f.acked) return false;
        ++op.done;
        return true;
      case Phase::ReadAwaitReply:
        return false;
      case Phase::ReadReceiving: {
        if (f.ucx_status != UCS_OK) {
          fail_op(op, ucx_error(ErrorCode::Remote, "staged READ from agent '" + op.peer->name + "'",
                                f.ucx_status));
          continue;
        }
        f.phase = Phase::ReadCopying;
        f.event_device = ch.device;
        if (auto st = copy_async(reinterpret_cast<void*>(ch.local), f.slot, ch.len, ch.device,
                                 stream(ch.device), &f.event);
            !st) {
          fail_op(op, st.error());
        }
        continue;
      }
      case Phase::ReadCopying:
        send_pool_.release(f.slot);
        f.slot = nullptr;
        ++op.done;
        return true;
    }
  }
}

ucs_status_t CudaBackend::on_am(unsigned id, void* arg, const void* header, size_t header_length,
                                void* data, size_t length, const ucp_am_recv_param_t* param) {
  // Inside ucp_worker_progress: only note the message; progress() handles it after.
  auto* self = static_cast<CudaBackend*>(arg);
  Incoming in;
  in.id = id;
  in.header.assign(static_cast<const char*>(header), header_length);
  in.reply_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
  in.rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  in.desc = in.rndv ? data : nullptr;
  if (!in.rndv) in.data.assign(static_cast<const char*>(data), length);
  const bool keep = in.rndv;  // a rendezvous descriptor stays until received or released
  self->incoming_.push_back(std::move(in));
  return keep ? UCS_INPROGRESS : UCS_OK;
}

}  // namespace kvbm::xfer::detail::cuda
