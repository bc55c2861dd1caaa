// Host -> GPU copies of a chunk list through staging (gpu_copy.h says why src/copy exists):
// CPU threads gather the chunks into a pinned staging slice, one copy-engine DMA moves the
// slice to its device twin, and one kernel launch scatters it to the chunks' destinations.
// For scattered small chunks on machines where neither engine reaches the link alone: the
// copy engines pay a setup per chunk, and a kernel reading mapped pinned memory is bound by
// its outstanding reads across PCIe, while one large DMA is not. The transfer engine's Cuda
// path chooses it by measurement (CudaHostEngine::Gather, transfer/host_engines.h).
//
// Slices are reused in turn: the CPU gathers the next while the GPU moves the last, and a
// slice is written again only after the scatter that read it has finished (its event).
// Thread safety: one caller at a time (the transfer engine's Cuda path holds its lock).
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "copy/chunk.h"
#include "kvbm/result.h"

namespace kvbm::detail {

class HostPool;

class GatherStage {
 public:
  static constexpr size_t kSlices = 3;
  // Bytes of one slice: a few of them keep the DMA busy while the CPU gathers the next,
  // each large enough that waking the pool's threads is a small part of its time.
  static constexpr size_t kSliceBytes = 16 << 20;

  // Allocates the slices (pinned and device memory) on the current device. CUDA's error
  // where an allocation fails.
  static Result<std::unique_ptr<GatherStage>> create();
  ~GatherStage();  // waits for the stage's queued copies, then frees the slices

  // Queues the copy of `chunks` (src: host memory the CPU reads; dst: device memory of the
  // current device, which must be the stage's) on `stream`, the CPU part on `pool`'s threads.
  // Returns once every source byte has been read into staging and the rest is queued: the
  // sources may be reused then, the destinations once the stream reaches what was queued.
  // CUDA's error where a call fails (what was queued before it stays ordered before the
  // slices' events).
  Status enqueue(std::span<const Chunk> chunks, HostPool& pool, cudaStream_t stream);

 private:
  struct Slice {
    void* host = nullptr;   // pinned: the gathered bytes
    void* dev = nullptr;    // device: their copy, which the scatter reads
    void* table = nullptr;  // mapped pinned: the scatter's pieces (CopyPiece)
    size_t table_pieces = 0;
    cudaEvent_t done = nullptr;  // recorded after the slice's scatter
  };
  GatherStage() = default;
  Status reserve_table(Slice& s, size_t pieces);
  Status enqueue_slice(Slice& s, std::span<const Chunk> parts, uint64_t bytes, HostPool& pool,
                       cudaStream_t stream);

  std::array<Slice, kSlices> slices_{};
  size_t next_ = 0;
  std::vector<Chunk> cpu_;  // the slice being filled: (chunk source -> staging) ranges
};

}  // namespace kvbm::detail
#endif
