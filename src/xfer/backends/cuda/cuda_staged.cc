// The staged path of the CUDA backend (see cuda_backend.h): chunks of a transfer go
// through pools of pinned bounce buffers and UCX active messages on the backend's own
// worker. Initiator: pump() starts chunks while buffers are free; advance() moves each
// one on (device copy -> send -> ack for WRITE; ask -> receive -> device copy for READ).
// Target: handle_incoming() checks each request against the registered regions and
// advance_job() serves it, acknowledging a WRITE only once its bytes are in place.
#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {

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
  send_am(ep, id, std::string(reinterpret_cast<const char*>(&h), sizeof h), data, len,
          [text, done = std::move(done)](ucs_status_t s) {
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
      send_am(op.peer->ep, kAmGet, std::string(reinterpret_cast<const char*>(&h), sizeof h),
              nullptr, 0, nullptr);
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
        send_am(op.peer->ep, kAmPut, std::string(reinterpret_cast<const char*>(&h), sizeof h),
                f.slot, ch.len, [fp](ucs_status_t s) {
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

void CudaBackend::handle_incoming(Incoming& in) {
  ++events_;
  auto drop = [&] {
    if (in.rndv) ucp_am_data_release(worker_, in.desc);
  };
  if (in.id == kAmPut || in.id == kAmGet) {
    if (in.header.size() != sizeof(ChunkHeader)) {
      log(LogLevel::Warn, "CUDA: dropped a staged chunk with a bad header");
      drop();
      return;
    }
    ChunkHeader h;
    std::memcpy(&h, in.header.data(), sizeof h);
    if (h.magic != kChunkMagic || in.reply_ep == nullptr) {
      log(LogLevel::Warn, "CUDA: dropped a malformed staged chunk");
      drop();
      return;
    }
    const bool put = in.id == kAmPut;
    const MemType type = static_cast<MemType>(h.mem_type);
    const bool type_ok = h.mem_type <= static_cast<uint32_t>(MemType::Unknown) &&
                         (type == MemType::Vram || type == MemType::Dram);
    const bool len_ok =
        h.len > 0 && h.len <= chunk_bytes_ && (in.rndv || !put || in.data.size() == h.len);
    if (!len_ok) {
      drop();
      Error e = err(ErrorCode::InvalidArgument, "staged chunk of ", h.len,
                    " bytes does not fit the bounce buffers of agent '", env_.agent_name, "' (",
                    chunk_bytes_, " bytes)");
      reply(in.reply_ep, put ? kAmAck : kAmGetReply, h.op, h.seq, &e, nullptr, 0, nullptr);
      return;
    }
    if (!type_ok || !local_range_ok(type, h.dev, h.addr, h.len)) {
      drop();
      Error e = err(ErrorCode::OutOfBounds, "staged ", put ? "WRITE" : "READ", " of ", h.len,
                    " bytes at ", hex(h.addr), " (device ", h.dev,
                    ") is not inside memory registered with agent '", env_.agent_name, "'");
      reply(in.reply_ep, put ? kAmAck : kAmGetReply, h.op, h.seq, &e, nullptr, 0, nullptr);
      return;
    }
    TargetJob job;
    job.kind = put ? kAmPut : kAmGet;
    job.h = h;
    job.reply_ep = in.reply_ep;
    job.rndv = in.rndv;
    job.desc = in.desc;
    job.eager = std::move(in.data);
    jobs_.push_back(std::move(job));
    return;
  }
  if (in.header.size() != sizeof(ReplyHeader)) {
    log(LogLevel::Warn, "CUDA: dropped a staged message with a bad header");
    drop();
    return;
  }
  ReplyHeader h;
  std::memcpy(&h, in.header.data(), sizeof h);
  auto oit = ops_.find(h.op);
  Flight* f = nullptr;
  if (h.magic == kChunkMagic && oit != ops_.end()) {
    auto fit = oit->second->flights.find(h.seq);
    if (fit != oit->second->flights.end()) f = &fit->second;
  }
  if (f == nullptr) {  // a cancelled op's late answer
    drop();
    return;
  }
  StagedOp& op = *oit->second;
  if (h.code >= 0) {
    std::string msg = in.rndv ? std::string("(message lost)") : in.data;
    drop();
    fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "': ", msg));
    return;
  }
  if (in.id == kAmAck) {
    drop();
    if (f->phase == Phase::WriteAwaitAck || f->phase == Phase::WriteSending) f->acked = true;
    return;
  }
  if (f->phase != Phase::ReadAwaitReply) {
    drop();
    return;
  }
  const StagedChunk& c = (*op.chunks)[h.seq];
  if (!in.rndv) {
    if (in.data.size() != c.len) {
      fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "' answered ", in.data.size(),
                      " bytes for a chunk of ", c.len));
      return;
    }
    std::memcpy(f->slot, in.data.data(), c.len);
    f->phase = Phase::ReadReceiving;
    f->ucx_status = UCS_OK;
    return;
  }
  f->phase = Phase::ReadReceiving;
  f->ucx_pending = true;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.user_data = f;
  p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user) {
    auto* fl = static_cast<Flight*>(user);
    fl->ucx_pending = false;
    fl->ucx_status = status;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, in.desc, f->slot, c.len, &p);
  if (!UCS_PTR_IS_PTR(r)) {
    f->ucx_pending = false;
    f->ucx_status = UCS_PTR_STATUS(r);
  }
}

// Moves one target-side job on; true when finished.
bool CudaBackend::advance_job(TargetJob& j) {
  const MemType type = static_cast<MemType>(j.h.mem_type);
  const int dev = type == MemType::Vram ? static_cast<int>(j.h.dev) : default_device_;
  void* target = reinterpret_cast<void*>(j.h.addr);
  for (;;) {
    if (j.event != nullptr) {
      cudaError_t e = cudaEventQuery(j.event);
      if (e == cudaErrorNotReady) return false;
      cudaEventDestroy(j.event);
      j.event = nullptr;
      if (e != cudaSuccess) {
        Error er = cuda_fail(ErrorCode::Internal, e, "staged copy at the target");
        recv_pool_.release(j.slot);
        j.slot = nullptr;
        reply(j.reply_ep, j.kind == kAmPut ? kAmAck : kAmGetReply, j.h.op, j.h.seq, &er, nullptr, 0,
              nullptr);
        return true;
      }
    }
    if (j.ucx_pending) return false;
    switch (j.step) {
      case TargetJob::Step::WaitSlot: {
        if (j.kind == kAmPut && !j.rndv) {
          // Small enough to have come with the message: copy it in directly.
          DeviceGuard g(dev);
          cudaError_t e = cudaMemcpy(target, j.eager.data(), j.h.len, cudaMemcpyDefault);
          Error er = e == cudaSuccess ? Error{ErrorCode::Internal, ""}
                                      : cuda_fail(ErrorCode::Internal, e, "staged copy");
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, e == cudaSuccess ? nullptr : &er, nullptr, 0,
                nullptr);
          return true;
        }
        j.slot = recv_pool_.acquire();
        if (j.slot == nullptr) return false;  // retried on the next progress
        if (j.kind == kAmPut) {
          j.step = TargetJob::Step::Receiving;
          j.ucx_pending = true;
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.user_data = &j;
          p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user) {
            auto* job = static_cast<TargetJob*>(user);
            job->ucx_pending = false;
            job->ucx_status = status;
            ucp_request_free(request);
          };
          ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, j.desc, j.slot, j.h.len, &p);
          if (!UCS_PTR_IS_PTR(r)) {
            j.ucx_pending = false;
            j.ucx_status = UCS_PTR_STATUS(r);
          }
          continue;
        }
        j.step = TargetJob::Step::Copying;
        j.event_device = dev;
        if (auto st = copy_async(j.slot, target, j.h.len, dev, stream(dev), &j.event); !st) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmGetReply, j.h.op, j.h.seq, &st.error(), nullptr, 0, nullptr);
          return true;
        }
        continue;
      }
      case TargetJob::Step::Receiving:
        if (j.ucx_status != UCS_OK) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          return true;  // the initiator sees its send fail
        }
        j.step = TargetJob::Step::Copying;
        j.event_device = dev;
        if (auto st = copy_async(target, j.slot, j.h.len, dev, stream(dev), &j.event); !st) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, &st.error(), nullptr, 0, nullptr);
          return true;
        }
        continue;
      case TargetJob::Step::Copying:
        if (j.kind == kAmPut) {
          // The bytes are in place: acknowledge, so the initiator may notify.
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, nullptr, nullptr, 0, nullptr);
          return true;
        }
        j.step = TargetJob::Step::Sending;
        j.ucx_pending = true;
        {
          TargetJob* jp = &j;
          reply(j.reply_ep, kAmGetReply, j.h.op, j.h.seq, nullptr, j.slot, j.h.len,
                [jp](ucs_status_t s) {
                  jp->ucx_pending = false;
                  jp->ucx_status = s;
                });
        }
        continue;
      case TargetJob::Step::Sending:
        recv_pool_.release(j.slot);
        j.slot = nullptr;
        return true;
    }
  }
}

}  // namespace kvbm::xfer::detail::cuda
