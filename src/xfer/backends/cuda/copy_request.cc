#include <algorithm>

#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {
namespace {

// enqueue()'s choice of the copy kernel, by a device's copies in a request: up to a few MiB
// on average VRAM <-> VRAM (one of them too: see launch_copy_one), several small ones with
// a host side, where the kernel beats the copy engines' setup per copy. A single host copy
// stays with the copy engine: the kernel's dependent PCIe reads make it slower alone
// (figures: BENCHMARKS.md, "Figures behind the code").
constexpr uint64_t kVramKernelMaxAvg = 4 << 20;
static_assert(kVramKernelMaxAvg <= kCopyOneMaxBytes);
constexpr uint64_t kHostKernelMaxAvg = 32 << 10;
constexpr uint64_t kHostPieceBytes = 16 << 10;
// VRAM pieces: about kVramPiecesWanted per launch, so that enough warps copy at once,
// within these bounds (smaller pieces cost table entries the host writes each post).
constexpr uint64_t kVramPiecesWanted = 2048;
constexpr uint64_t kVramPieceMin = 8 << 10;

uint64_t vram_piece_bytes(uint64_t total) {
  uint64_t piece = kVramPieceMin;
  while (piece < kCopyPieceBytes && piece * 2 * kVramPiecesWanted <= total) piece *= 2;
  return piece;
}

}  // namespace

CudaCopyRequest::~CudaCopyRequest() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  // Copies cannot be cancelled: wait for them, so that no byte lands after this.
  for (auto& [dev, ev] : events_) {
    if (ev == nullptr) continue;
    DeviceGuard g(dev);
    cudaEventSynchronize(ev);
    cudaEventDestroy(ev);
  }
  for (auto& d : used_) {
    if (d.pieces != nullptr) cudaFreeHost(d.pieces);
  }
  peer_->copies.erase(this);
}

Error CudaCopyRequest::error() const {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  return error_;
}

Status CudaCopyRequest::post() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (state_ == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "CUDA request is already in progress");
  }
  if (peer_->failure) {
    return fail_locked(
        err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message));
  }
  // The copies of each device used (almost always one), gathered first: each device's go
  // to its stream in one call. Vectors are kept across posts: no allocation per post.
  used_count_ = 0;
  for (auto& d : used_) d.copies.clear();
  for (const CopyItem& it : items_) {
    uint64_t remote = it.remote;
    if (it.ipc != nullptr) {
      if (it.ipc->mapped == nullptr) {
        return fail_locked(err(ErrorCode::Remote, "the CUDA IPC mapping of agent '", peer_->name,
                               "' region ", hex(it.ipc->desc.addr), " is closed"));
      }
      remote = reinterpret_cast<uint64_t>(it.ipc->mapped) + (it.remote - it.ipc->ipc->alloc_base);
    }
    const auto end = used_.begin() + static_cast<ptrdiff_t>(used_count_);
    auto d = std::find_if(used_.begin(), end, [&](const DeviceCopies& u) {
      return u.device == it.device && u.host == it.host && u.cross_gpu == it.cross_gpu &&
             u.mapped == it.mapped;
    });
    if (d == end) {
      if (used_count_ == used_.size()) used_.emplace_back();
      d = used_.begin() + static_cast<ptrdiff_t>(used_count_++);
      d->device = it.device;
      d->host = it.host;
      d->cross_gpu = it.cross_gpu;
      d->mapped = it.mapped;
      d->stream = backend_->stream(it.device);
      if (d->stream == nullptr) {
        return fail_locked(err(ErrorCode::Internal, "no CUDA stream on device ", it.device));
      }
    }
    d->copies.add(reinterpret_cast<void*>(op_ == Op::Write ? remote : it.local),
                  reinterpret_cast<const void*>(op_ == Op::Write ? it.local : remote), it.len);
  }
  // A failure after some copies were queued waits for those, so none lands later.
  auto drain = [&](Error e) {
    for (size_t i = 0; i < used_count_; ++i) {
      DeviceGuard g(used_[i].device);
      cudaStreamSynchronize(used_[i].stream);
    }
    return fail_locked(std::move(e));
  };
  for (size_t i = 0; i < used_count_; ++i) {
    if (Status st = enqueue(used_[i]); !st) return drain(st.error());
  }
  for (size_t i = 0; i < used_count_; ++i) {
    const int dev = used_[i].device;
    const cudaStream_t s = used_[i].stream;
    DeviceGuard g(dev);
    auto ev = std::find_if(events_.begin(), events_.end(), [&](auto& p) { return p.first == dev; });
    if (ev == events_.end()) {
      cudaEvent_t e = nullptr;
      if (cudaError_t r = cudaEventCreateWithFlags(&e, cudaEventDisableTiming); r != cudaSuccess)
        return drain(cuda_fail(ErrorCode::Internal, r, "cudaEventCreate"));
      events_.emplace_back(dev, e);
      ev = events_.end() - 1;
    }
    if (cudaError_t r = cudaEventRecord(ev->second, s); r != cudaSuccess)
      return drain(cuda_fail(ErrorCode::Internal, r, "cudaEventRecord"));
  }
  state_ = XferState::InProgress;
  signalled_ = false;
  peer_->copies.insert(this);
  return {};
}

// One device's copies of a post, in one call where there are several. With a host side:
// one cudaMemcpyBatchAsync, whose copy engines overlap their setup, unless the copies are
// small and the host side is mapped pinned memory: the copy engines still pay a setup per
// copy there, so one launch of the copy kernel moves them over PCIe instead. VRAM to VRAM,
// a few MiB each or less: the copy kernel (copy/gpu_copy.h, a single copy passed by value), as
// a batch runs them no faster than a call each. Otherwise a cudaMemcpyAsync each
// (figures: BENCHMARKS.md, "Figures behind the code").
Status CudaCopyRequest::enqueue(DeviceCopies& d) {
  DeviceGuard g(d.device);
  const kvbm::detail::CopyList& c = d.copies;
  const size_t n = c.size();
  uint64_t total = 0;
  for (size_t len : c.sizes) total += len;
  const bool kernel = backend_->kernel_copies_ && !d.cross_gpu &&
                      (d.host ? n > 1 && d.mapped && total / n <= kHostKernelMaxAvg
                              : total / n <= kVramKernelMaxAvg);
  if (kernel && n == 1) {
    if (cudaError_t e = launch_copy_one(reinterpret_cast<uint64_t>(c.srcs[0]),
                                        reinterpret_cast<uint64_t>(c.dsts[0]), total, d.stream);
        e != cudaSuccess) {
      return cuda_fail(ErrorCode::Internal, e,
                       "copy kernel launch for " + std::to_string(total) + " bytes on device " +
                           std::to_string(d.device));
    }
    return {};
  }
  if (kernel) {
    // Small pieces: more warps copy at once (for host memory, more PCIe reads in flight).
    const uint64_t piece = d.host ? kHostPieceBytes : vram_piece_bytes(total);
    uint64_t count = 0;
    for (size_t len : c.sizes) count += (len + piece - 1) / piece;
    if (count <= UINT32_MAX) {
      if (count > d.piece_capacity) {
        // The previous post's launch has completed (a request is posted again only then).
        if (d.pieces != nullptr) cudaFreeHost(d.pieces);
        d.pieces = nullptr;
        d.piece_capacity = 0;
        void* p = nullptr;
        if (cudaError_t e = cudaHostAlloc(&p, count * sizeof(CopyPiece),
                                          cudaHostAllocMapped | cudaHostAllocPortable);
            e != cudaSuccess) {
          return cuda_fail(ErrorCode::AllocationFailed, e,
                           "cudaHostAlloc of a copy table of " + std::to_string(count) + " pieces");
        }
        d.pieces = static_cast<CopyPiece*>(p);
        d.piece_capacity = count;
      }
      size_t k = 0;
      for (size_t i = 0; i < n; ++i) {
        const auto src = reinterpret_cast<uint64_t>(c.srcs[i]);
        const auto dst = reinterpret_cast<uint64_t>(c.dsts[i]);
        for (uint64_t off = 0; off < c.sizes[i]; off += piece) {
          d.pieces[k++] = {src + off, dst + off, std::min<uint64_t>(piece, c.sizes[i] - off)};
        }
      }
      if (cudaError_t e = launch_copy_list(d.pieces, static_cast<uint32_t>(count), d.stream);
          e != cudaSuccess) {
        return cuda_fail(ErrorCode::Internal, e,
                         "copy kernel launch for " + std::to_string(n) + " copies on device " +
                             std::to_string(d.device));
      }
      return {};
    }
  }
  if (n > 1 && d.host && backend_->batch_copies_.load(std::memory_order_relaxed)) {
    const cudaError_t e = kvbm::detail::memcpy_batch(c, 0, n, d.stream);
    if (e == cudaSuccess) return {};
    if (!kvbm::detail::batch_unsupported(e)) {
      return cuda_fail(ErrorCode::Internal, e,
                       "cudaMemcpyBatchAsync of " + std::to_string(n) + " copies on device " +
                           std::to_string(d.device));
    }
    (void)cudaGetLastError();  // not sticky; clear it before going on without batches
    backend_->batch_copies_ = false;
    log(LogLevel::Info, "CUDA: cudaMemcpyBatchAsync unsupported here; one copy call each");
  }
  size_t i = 0;
  if (cudaError_t e = kvbm::detail::memcpy_each(c, 0, n, d.stream, &i); e != cudaSuccess) {
    return cuda_fail(ErrorCode::Internal, e,
                     "cudaMemcpyAsync of " + std::to_string(c.sizes[i]) + " bytes " +
                         hex(reinterpret_cast<uint64_t>(c.srcs[i])) + " -> " +
                         hex(reinterpret_cast<uint64_t>(c.dsts[i])) + " on device " +
                         std::to_string(d.device));
  }
  return {};
}

XferState CudaCopyRequest::poll() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (state_ != XferState::InProgress) return state_;
  for (auto& [dev, ev] : events_) {
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaErrorNotReady) return state_;
    if (e != cudaSuccess) {
      (void)fail_locked(
          cuda_fail(ErrorCode::Internal, e,
                    "CUDA copy with agent '" + peer_->name + "' on device " + std::to_string(dev)));
      return state_;
    }
  }
  state_ = XferState::Done;
  return state_;
}

}  // namespace kvbm::xfer::detail::cuda
