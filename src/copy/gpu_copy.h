// kvbm's local copies, one module (src/copy) below both layers that copy: the block layer
// (src/transfer, TransferEngine) and the agent's backends (src/xfer/backends). Local copies
// are owned here rather than by either layer because each needs them and neither may
// include the other's internals: transfer sits above xfer, so the backends could not call
// the engine's copiers, and the engine must not reach into a backend. Each layer keeps
// only its policy (which engine, which piece size, which requests); the mechanisms live
// here once:
//   gpu_copy.h     the GPU copy kernels: a block copy between two layouts' strides (the
//                  engine's Cuda path) and a list of pieces (the CUDA backend's requests)
//   gpu_batch.h    cudaMemcpyBatchAsync and a copy call each, with the driver fallback
//   host_copy.h    host memory copies: the engine's asynchronous pool, the agent's
//                  fork-join copier, and the range copy both cut their work with
//   staging.h      the host staging buffer of file <-> GPU copies and its batching
//
// This header: the GPU copy kernels (gpu_copy.cu). Two entry points over one inner loop
// (copy_piece.cuh): a block copy, where one launch copies every chunk of a list of block
// pairs between two layouts, each chunk cut into pieces; and a piece list, where one launch
// copies a table of (src, dst, len). 16-byte accesses where both ends of a piece are
// 16-byte aligned, bytes otherwise. Pointers may be device memory, a peer's memory mapped
// through CUDA IPC, or mapped pinned host memory.
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace kvbm::detail {

// ---- Block copy (the engine's Cuda path) -------------------------------------------------

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

// ---- Piece list (the CUDA backend's requests) --------------------------------------------
// For requests of many VRAM <-> VRAM copies, which a cudaMemcpyAsync each would leave bound
// by the calls, and of small copies between VRAM and mapped pinned host memory, which the
// copy engines pay a setup for each. Both ends of each copy are addressable from the
// launching device's context.

struct CopyPiece {
  uint64_t src;
  uint64_t dst;
  uint64_t len;
};

// Copies longer than this are cut into pieces of it: one warp copies one piece at a time.
constexpr uint64_t kCopyPieceBytes = 64 << 10;

// Queues the copies of `pieces` (device-readable: mapped pinned host memory or device
// memory, left untouched until the launch completes) on `stream`; count 0 queues nothing.
cudaError_t launch_copy_list(const CopyPiece* pieces, uint32_t count, cudaStream_t stream);

// Queues one copy of `len` bytes (at most kCopyOneMaxBytes) on `stream`, passed by value:
// no table for the kernel to read first. A single VRAM copy of a few MiB goes this way
// because a kernel launch costs the caller less than a device-to-device cudaMemcpyAsync,
// and at 1 MiB that call is most of a request's time (figures: BENCHMARKS.md, "Figures
// behind the code").
constexpr uint64_t kCopyOneMaxBytes = uint64_t{1} << 31;
cudaError_t launch_copy_one(uint64_t src, uint64_t dst, uint64_t len, cudaStream_t stream);

}  // namespace kvbm::detail
#endif
