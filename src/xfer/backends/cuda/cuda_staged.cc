// The staged path of the CUDA backend (see cuda_backend.h): the chunked staging protocol
// (ucx_common/staging_*.h) through pools of pinned bounce buffers on the backend's own
// worker. Initiator: pump() starts chunks while buffers are free; advance() moves each
// one on (device copy -> send -> ack for WRITE; ask -> receive -> device copy for READ).
// The target's side is staged_target.cc.
#include "xfer/backends/cuda/cuda_backend_impl.h"
#include "xfer/ucx_common/staging_am.h"

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
  op->w = staging::Window(chunks_->size());
  backend_->ops_[op->id] = op;
  current_ = op;
  backend_->pump(*op);
  return {};
}

Error CudaStagedRequest::error() const {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  return current_ ? current_->error : err(ErrorCode::Internal, "not posted");
}

staging::Allocator pinned_allocator() {
  return {[](size_t bytes) -> Result<char*> {
            void* p = nullptr;
            if (cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable); e != cudaSuccess) {
              return cuda_fail(
                  ErrorCode::AllocationFailed, e,
                  "cudaHostAlloc of a " + std::to_string(bytes) + "-byte bounce buffer");
            }
            return static_cast<char*>(p);
          },
          [](char* p) { cudaFreeHost(p); }};
}

// Every bounce buffer, allocated once: no chunk waits for cudaHostAlloc.
Status CudaBackend::ensure_pools() {
  if (pools_ready_) return {};
  DeviceGuard g(default_device_);
  KVBM_TRY(send_pool_.reserve());
  KVBM_TRY(recv_pool_.reserve());
  pools_ready_ = true;
  return {};
}

// A chunk's request: a WRITE's bytes from its bounce buffer, sent once its copy is done.
void CudaBackend::send_request(StagedOp& op, uint64_t seq, Flight* f) {
  const StagedChunk& c = (*op.chunks)[seq];
  auto m = staging::request(
      {op.op, c.remote_type, op.id, seq, c.remote_dev, c.remote, c.len, op.peer->token});
  const bool write = op.op == Op::Write;
  if (write) f->ucx.pending = true;
  m.done = [this, f, write, id = op.id](ucs_status_t s) {
    if (write) f->ucx = {false, s};
    if (s != UCS_OK) outstanding_.answered(id);  // never asked: no answer to poll for
  };
  outstanding_.sent(op.id, op.peer);
  staging::send(op.peer->ep, kAmRequest, std::move(m), write ? f->slot.get() : nullptr,
                write ? c.len : 0, UCP_AM_SEND_FLAG_REPLY);
}

void CudaBackend::reply(TargetJob& j, const Error* e) {
  staging::OwedReplies::Reply r;
  r.h = {j.h.xfer, j.h.seq, e ? std::optional(e->code) : std::nullopt};
  if (e != nullptr) r.error_text = e->message;
  if (e == nullptr && j.h.op == Op::Read) {
    r.bytes = std::move(j.slot);
    r.len = j.h.len;
  }
  j.slot.reset();
  owed_.add(j.reply_ep, j.h.token, std::move(r), staging::OwedReplies::Clock::now());
}

ucs_status_t CudaBackend::on_poll(void* arg, const void* header, size_t header_length,
                                  void* /*data*/, size_t /*length*/,
                                  const ucp_am_recv_param_t* param) {
  // Inside ucp_worker_progress (the lock held): the poll's endpoint is valid until this
  // returns, so the answers go now, not after it as the other messages are handled.
  auto* self = static_cast<CudaBackend*>(arg);
  auto p = staging::decode_chunk_poll({static_cast<const char*>(header), header_length});
  const ucp_ep_h ep =
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr;
  if (!p || ep == nullptr) {
    log(LogLevel::Warn, "CUDA: dropped a staged poll: " +
                            (p ? std::string("no reply endpoint") : p.error().message));
    return UCS_OK;
  }
  ++self->events_;
  staging::answer_poll(self->owed_, ep, p->token, kAmReply, 0);
  return UCS_OK;
}

void CudaBackend::poll_due() {
  const auto now = staging::Polls::Clock::now();
  // Chunks asked and not yet answered (of ops cancelled or failed too: their answers hold
  // the target's bounce buffers until polled for).
  outstanding_.for_each_peer([&](const std::shared_ptr<CudaPeer>& peer) {
    if (peer->failure || peer->ep == nullptr || !polls_.take(peer->token, now)) return;
    staging::send_poll(polls_, peer->ep, peer->token, kAmPoll);
  });
  if (outstanding_.empty()) polls_.prune();
  events_ += owed_.expire_due(now);
}

void CudaBackend::fail_op(StagedOp& op, Error e) {
  if (op.state.load() != XferState::InProgress) return;
  op.error = std::move(e);
  op.state.store(XferState::Error, std::memory_order_release);
  ++events_;
}

// Starts chunks while bounce buffers are free.
void CudaBackend::pump(StagedOp& op) {
  while (op.state.load() == XferState::InProgress && op.w.ready()) {
    staging::Buffer slot = send_pool_.acquire();
    if (!slot) return;
    const uint64_t seq = op.w.take();
    const StagedChunk& c = (*op.chunks)[seq];
    Flight& f = op.flights[seq];
    f.seq = seq;
    f.slot = std::move(slot);
    if (op.op == Op::Write) {
      f.phase = Phase::WriteCopying;
      f.event_device = c.device;
      if (auto st = copy_async(f.slot.get(), reinterpret_cast<const void*>(c.local), c.len,
                               c.device, stream(c.device), &f.event);
          !st) {
        fail_op(op, st.error());
      }
    } else {
      f.phase = Phase::ReadAwaitReply;
      send_request(op, seq, &f);
    }
  }
}

bool copy_ended(cudaEvent_t* event, cudaError_t* result) {
  *result = cudaSuccess;
  if (*event == nullptr) return true;
  cudaError_t e = cudaEventQuery(*event);
  if (e == cudaErrorNotReady) return false;
  cudaEventDestroy(*event);
  *event = nullptr;
  *result = e;
  return true;
}

// Moves one chunk on; true when it is finished (successfully or not) and can be erased.
bool CudaBackend::advance(StagedOp& op, Flight& f) {
  for (;;) {
    cudaError_t e = cudaSuccess;
    if (!copy_ended(&f.event, &e)) return false;
    if (e != cudaSuccess) fail_op(op, cuda_fail(ErrorCode::Internal, e, "staged CUDA copy"));
    if (f.ucx.pending) return false;
    if (op.state.load() != XferState::InProgress) return true;  // its buffer goes with it
    const StagedChunk& ch = (*op.chunks)[f.seq];
    switch (f.phase) {
      case Phase::WriteCopying:
        f.phase = Phase::WriteSending;
        send_request(op, f.seq, &f);
        continue;
      case Phase::WriteSending:
        f.slot.reset();
        if (f.ucx.status != UCS_OK) {
          fail_op(op, ucx_error(ErrorCode::Remote, "staged WRITE to agent '" + op.peer->name + "'",
                                f.ucx.status));
          return true;
        }
        f.phase = Phase::WriteAwaitAck;
        continue;
      case Phase::WriteAwaitAck:
        if (!f.acked) return false;
        op.w.finish(f.seq);
        return true;
      case Phase::ReadAwaitReply:
        return false;
      case Phase::ReadReceiving: {
        if (f.ucx.status != UCS_OK) {
          fail_op(op, ucx_error(ErrorCode::Remote, "staged READ from agent '" + op.peer->name + "'",
                                f.ucx.status));
          continue;
        }
        f.phase = Phase::ReadCopying;
        f.event_device = ch.device;
        if (auto st = copy_async(reinterpret_cast<void*>(ch.local), f.slot.get(), ch.len, ch.device,
                                 stream(ch.device), &f.event);
            !st) {
          fail_op(op, st.error());
        }
        continue;
      }
      case Phase::ReadCopying:
        f.slot.reset();
        op.w.finish(f.seq);
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
