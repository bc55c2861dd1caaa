#include "copy/gpu_gather.h"

#if KVBM_HAVE_CUDA
#include <algorithm>
#include <chrono>

#include "common/cuda_util.h"
#include "copy/gpu_copy.h"
#include "copy/host_pool.h"

namespace kvbm::detail {
namespace {

// A slice of fewer bytes is gathered by the calling thread: handing it to the pool's
// threads would cost more than the copy.
constexpr uint64_t kPoolMinBytes = 1 << 20;

Error failure(cudaError_t e, const char* what) {
  cudaGetLastError();
  return cuda_error(ErrorCode::Internal, e, what);
}

}  // namespace

Result<std::unique_ptr<GatherStage>> GatherStage::create() {
  std::unique_ptr<GatherStage> g(new GatherStage());
  for (Slice& s : g->slices_) {
    cudaError_t e = cudaHostAlloc(&s.host, kSliceBytes, cudaHostAllocDefault);
    if (e != cudaSuccess) s.host = nullptr;
    if (e == cudaSuccess && (e = cudaMalloc(&s.dev, kSliceBytes)) != cudaSuccess) s.dev = nullptr;
    if (e == cudaSuccess &&
        (e = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming)) != cudaSuccess) {
      s.done = nullptr;
    }
    if (e != cudaSuccess) return failure(e, "allocating a gather staging slice");
  }
  return g;
}

GatherStage::~GatherStage() {
  for (Slice& s : slices_) {
    if (s.done != nullptr) {
      cudaEventSynchronize(s.done);
      cudaEventDestroy(s.done);
    }
    if (s.table != nullptr) cudaFreeHost(s.table);
    if (s.host != nullptr) cudaFreeHost(s.host);
    if (s.dev != nullptr) cudaFree(s.dev);
  }
  cudaGetLastError();
}

// Grows the slice's piece table (the slice is idle: its event has been waited for).
Status GatherStage::reserve_table(Slice& s, size_t pieces) {
  if (s.table_pieces >= pieces) return {};
  const size_t n = std::max(pieces, 2 * s.table_pieces);
  if (s.table != nullptr) cudaFreeHost(s.table);
  s.table = nullptr;
  s.table_pieces = 0;
  if (cudaError_t e = cudaHostAlloc(&s.table, n * sizeof(CopyPiece), cudaHostAllocMapped);
      e != cudaSuccess) {
    s.table = nullptr;
    return failure(e, "allocating a gather piece table");
  }
  s.table_pieces = n;
  return {};
}

// One slice: wait until its last use is done, gather `parts` into it on the CPU, then queue
// the DMA and the scatter and record the slice's event (also after a failed call, so that
// its next use still waits for whatever was queued).
Status GatherStage::enqueue_slice(Slice& s, std::span<const Chunk> parts, uint64_t bytes,
                                  HostPool& pool, cudaStream_t stream) {
  if (cudaError_t e = cudaEventSynchronize(s.done); e != cudaSuccess) {
    return failure(e, "waiting for a gather staging slice");
  }
  size_t pieces = 0;
  for (const Chunk& p : parts) pieces += (p.len + kCopyPieceBytes - 1) / kCopyPieceBytes;
  KVBM_TRY(reserve_table(s, pieces));
  auto* table = static_cast<CopyPiece*>(s.table);
  const auto host = reinterpret_cast<uint64_t>(s.host);
  const auto dev = reinterpret_cast<uint64_t>(s.dev);
  cpu_.clear();
  uint64_t at = 0;
  size_t k = 0;
  for (const Chunk& p : parts) {
    cpu_.push_back({p.src, host + at, p.len, 0, 0});
    for (uint64_t off = 0; off < p.len; off += kCopyPieceBytes) {
      table[k++] = {dev + at + off, p.dst + off, std::min(kCopyPieceBytes, p.len - off)};
    }
    at += p.len;
  }
  if (bytes < kPoolMinBytes || pool.threads() == 0) {
    for (const Chunk& c : cpu_) HostPool::copy_bytes(c.dst, c.src, c.len, false);
  } else {
    // Streaming stores: the DMA reads the slice from memory next, and they spare the
    // memory bus a read of every destination line, which the DMA and the sources need.
    pool.submit(cpu_, bytes, true)->wait_for(std::chrono::hours(24 * 365));
  }
  cudaError_t e = cudaMemcpyAsync(s.dev, s.host, bytes, cudaMemcpyHostToDevice, stream);
  const char* what = "cudaMemcpyAsync of a gather staging slice";
  if (e == cudaSuccess &&
      (e = launch_copy_list(table, static_cast<uint32_t>(pieces), stream)) != cudaSuccess) {
    what = "launching a gather scatter kernel";
  }
  const cudaError_t recorded = cudaEventRecord(s.done, stream);
  if (e != cudaSuccess) return failure(e, what);
  if (recorded != cudaSuccess) return failure(recorded, "cudaEventRecord");
  return {};
}

Status GatherStage::enqueue(std::span<const Chunk> chunks, HostPool& pool, cudaStream_t stream) {
  std::vector<Chunk> parts;  // the next slice's: (source, device destination) ranges
  uint64_t used = 0;
  auto flush = [&]() -> Status {
    KVBM_TRY(enqueue_slice(slices_[next_++ % kSlices], parts, used, pool, stream));
    parts.clear();
    used = 0;
    return {};
  };
  for (const Chunk& c : chunks) {
    for (uint64_t off = 0; off < c.len;) {
      const uint64_t n = std::min<uint64_t>(c.len - off, kSliceBytes - used);
      parts.push_back({c.src + off, c.dst + off, n, 0, 0});
      used += n;
      off += n;
      if (used == kSliceBytes) KVBM_TRY(flush());
    }
  }
  if (used > 0) KVBM_TRY(flush());
  return {};
}

}  // namespace kvbm::detail
#endif
