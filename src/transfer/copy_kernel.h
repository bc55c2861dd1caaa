// The block copy kernels (copy_kernel.cu): one launch copies every chunk of a list of block
// pairs between two layouts, each chunk cut into pieces; 16-byte accesses where both ends
// of a piece are 16-byte aligned, bytes otherwise. Pointers may be device memory or mapped
// pinned host memory.
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace kvbm::detail {

// One side of a block copy (Layout::Strides): chunk (b, l, o) starts at
// bases[per_layer ? l : 0] + b * block + l * layer + o * outer.
struct BlockSide {
  const uint64_t* bases;  // device-readable
  uint64_t block;
  uint64_t layer;
  uint64_t outer;
  uint32_t per_layer;
};

// Copies every chunk of `pairs` blocks from src to dst, the kernel computing each address:
// the host uploads only block ids, not one entry per chunk, so a request of many small
// chunks costs the CPU almost nothing.
struct BlockCopy {
  BlockSide src;
  BlockSide dst;
  const uint64_t* ids;  // device-readable: source id, destination id, for each pair
  uint64_t pairs;
  uint32_t layers;
  uint32_t outer_dim;
  uint64_t chunk;  // bytes of one chunk
  uint64_t piece;  // one worker (CTA or warp) copies at most this many bytes at a time
};

// The kernel variants (CudaCopyKernel in transfer/cuda_tuning.h says what each does).
enum class CopyKernel : uint8_t { Baseline, Cta, Warp };

struct CopyLaunch {
  CopyKernel kernel = CopyKernel::Baseline;
  unsigned max_ctas = 1;  // the grid is at most this many CTAs (SMs x CTAs per SM)
  unsigned threads = 512;
  // Cta and Warp: 64-bit index arithmetic even where the job fits 32 bits (tests).
  bool index64 = false;
};

// Pieces at most this large are copied by one warp each in CopyKernel::Warp.
constexpr uint64_t kWarpMaxPiece = 32 << 10;

// Queues the copy on `stream`; a job without bytes queues nothing.
cudaError_t launch_block_copy_kernel(const BlockCopy& job, const CopyLaunch& launch,
                                     cudaStream_t stream);

}  // namespace kvbm::detail
#endif
