// The target's side of the CUDA backend's staged path: handle_incoming() checks each
// chunk asked of us against the registered regions and advance_job() serves it,
// acknowledging a WRITE only once its bytes are in place (every answer is owed to the
// initiator's next poll: cuda_staged.cc, on_poll); answers to our own chunks go to
// their transfers (cuda_staged.cc).
#include <cstring>

#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {

// Every message received in the last ucp_worker_progress: a chunk to serve, or an answer
// to one of ours.
void CudaBackend::handle_incoming(Incoming& in) {
  ++events_;
  if (in.id == kAmRequest) {
    handle_chunk(in);
  } else {
    handle_reply(in);
  }
}

void CudaBackend::drop(Incoming& in) {
  if (in.rndv) ucp_am_data_release(worker_, in.desc);
}

// A chunk asked of this backend: checked against the registered regions, then queued.
void CudaBackend::handle_chunk(Incoming& in) {
  // The length is checked below, answered with the bounce buffers' size.
  auto decoded = staging::decode_chunk_request(in.header, UINT64_MAX);
  if (!decoded || in.reply_ep == nullptr) {
    log(LogLevel::Warn, "CUDA: dropped a staged chunk: " +
                            (decoded ? std::string("no reply endpoint") : decoded.error().message));
    drop(in);
    return;
  }
  TargetJob job;
  job.h = *decoded;
  job.reply_ep = in.reply_ep;
  const staging::ChunkRequest& h = job.h;
  const bool put = h.op == Op::Write;
  const bool type_ok = h.space == MemType::Vram || h.space == MemType::Dram;
  const bool len_ok = h.len <= chunk_bytes_ && (in.rndv || !put || in.data.size() == h.len);
  if (!len_ok) {
    drop(in);
    Error e = err(ErrorCode::InvalidArgument, "staged chunk of ", h.len,
                  " bytes does not fit the bounce buffers of agent '", env_.agent_name, "' (",
                  chunk_bytes_, " bytes)");
    reply(job, &e);
    return;
  }
  if (!type_ok || !local_range_ok(h.space, h.dev, h.addr, h.len)) {
    drop(in);
    Error e = err(ErrorCode::OutOfBounds, "staged ", put ? "WRITE" : "READ", " of ", h.len,
                  " bytes at ", hex(h.addr), " (device ", h.dev,
                  ") is not inside memory registered with agent '", env_.agent_name, "'");
    reply(job, &e);
    return;
  }
  job.rndv = in.rndv;
  job.desc = in.desc;
  job.eager = std::move(in.data);
  waiting_.push_back(std::move(job));
}

// The chunks waiting, in order, as bounce buffers free (a WRITE that came whole needs
// none). UCX keeps a rendezvous WRITE's bytes until then, so none is answered "busy"; one
// whose buffer cannot be allocated is answered with that error.
void CudaBackend::admit_jobs() {
  staging::admit(
      waiting_, recv_pool_, [](const TargetJob& j) { return j.h.op == Op::Read || j.rndv; },
      [&](TargetJob&& j, staging::Buffer b) {
        j.slot = std::move(b);
        jobs_.push_back(std::move(j));
      },
      [&](TargetJob&& j) {
        if (j.rndv) ucp_am_data_release(worker_, j.desc);
        Error e = err(ErrorCode::AllocationFailed, "no bounce buffer free at agent '",
                      env_.agent_name, "'");
        reply(j, &e);
      });
}

// An answer to a chunk of one of our transfers: an ack, a READ's bytes, or an error.
void CudaBackend::handle_reply(Incoming& in) {
  auto decoded = staging::decode_chunk_reply(in.header);
  if (!decoded) {
    log(LogLevel::Warn, "CUDA: dropped a staged reply: " + decoded.error().message);
    drop(in);
    return;
  }
  const staging::ChunkReply& h = *decoded;
  if (h.poll_end) {  // our poll's answer is over: xfer is its token
    drop(in);
    polls_.answered(h.xfer, h.seq, staging::Polls::Clock::now());
    return;
  }
  outstanding_.answered(h.xfer);
  auto oit = ops_.find(h.xfer);
  Flight* f = nullptr;
  if (oit != ops_.end() && oit->second->w.awaited(h.seq)) {
    auto fit = oit->second->flights.find(h.seq);
    if (fit != oit->second->flights.end()) f = &fit->second;
  }
  if (f == nullptr) {  // a cancelled op's late answer
    drop(in);
    return;
  }
  StagedOp& op = *oit->second;
  if (h.error || h.busy) {  // the target never answers "busy": its peers' bytes wait in UCX
    std::string msg = in.rndv ? std::string("(message lost)") : in.data;
    if (h.busy) msg = "a busy reply";
    drop(in);
    fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "': ", msg));
    return;
  }
  if (op.op == Op::Write) {
    drop(in);
    if (f->phase == Phase::WriteAwaitAck || f->phase == Phase::WriteSending) {
      op.w.answer(h.seq);
      f->acked = true;
    }
    return;
  }
  if (f->phase != Phase::ReadAwaitReply) {
    drop(in);
    return;
  }
  op.w.answer(h.seq);
  receive_reply(op, *f, in);
}

// A READ's bytes, into the chunk's bounce buffer: copied from an eager message, or
// received from a rendezvous one.
void CudaBackend::receive_reply(StagedOp& op, Flight& f, Incoming& in) {
  const StagedChunk& c = (*op.chunks)[f.seq];
  if (!in.rndv) {
    if (in.data.size() != c.len) {
      fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "' answered ", in.data.size(),
                      " bytes for a chunk of ", c.len));
      return;
    }
    std::memcpy(f.slot.get(), in.data.data(), c.len);
    f.phase = Phase::ReadReceiving;
    f.ucx.status = UCS_OK;
    return;
  }
  f.phase = Phase::ReadReceiving;
  staging::receive(worker_, in.desc, f.slot.get(), c.len, &f.ucx);
}

// A job's first step: a small WRITE's bytes copied in at once; else, into its bounce
// buffer, its bytes received (WRITE) or copied out of the target memory (READ). True when
// the job is finished (answered).
bool CudaBackend::start_job(TargetJob& j, int dev, void* target) {
  if (j.h.op == Op::Write && !j.rndv) {
    // Small enough to have come with the message: copy it in directly.
    DeviceGuard g(dev);
    cudaError_t e = cudaMemcpy(target, j.eager.data(), j.h.len, cudaMemcpyDefault);
    Error er = e == cudaSuccess ? Error{ErrorCode::Internal, ""}
                                : cuda_fail(ErrorCode::Internal, e, "staged copy");
    reply(j, e == cudaSuccess ? nullptr : &er);
    return true;
  }
  if (j.h.op == Op::Write) {
    j.step = TargetJob::Step::Receiving;
    staging::receive(worker_, j.desc, j.slot.get(), j.h.len, &j.ucx);
    return false;
  }
  j.step = TargetJob::Step::Copying;
  j.event_device = dev;
  if (auto st = copy_async(j.slot.get(), target, j.h.len, dev, stream(dev), &j.event); !st) {
    reply(j, &st.error());
    return true;
  }
  return false;
}

// Moves one target-side job on; true when finished.
bool CudaBackend::advance_job(TargetJob& j) {
  const int dev = j.h.space == MemType::Vram ? static_cast<int>(j.h.dev) : default_device_;
  void* target = reinterpret_cast<void*>(j.h.addr);
  for (;;) {
    cudaError_t e = cudaSuccess;
    if (!copy_ended(&j.event, &e)) return false;
    if (e != cudaSuccess) {
      Error er = cuda_fail(ErrorCode::Internal, e, "staged copy at the target");
      reply(j, &er);
      return true;
    }
    if (j.ucx.pending) return false;
    switch (j.step) {
      case TargetJob::Step::Start:
        if (start_job(j, dev, target)) return true;
        continue;
      case TargetJob::Step::Receiving:
        if (j.ucx.status != UCS_OK) return true;  // the initiator sees its send fail
        j.step = TargetJob::Step::Copying;
        j.event_device = dev;
        if (auto st = copy_async(target, j.slot.get(), j.h.len, dev, stream(dev), &j.event); !st) {
          reply(j, &st.error());
          return true;
        }
        continue;
      case TargetJob::Step::Copying:
        // WRITE: the bytes are in place: acknowledge, so the initiator may notify. READ:
        // the bytes go from the bounce buffer, back to its pool once sent.
        reply(j, nullptr);
        return true;
    }
  }
}

}  // namespace kvbm::xfer::detail::cuda
