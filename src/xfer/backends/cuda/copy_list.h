// One kernel launch for a list of VRAM copies (copy_list.cu): the CUDA backend's path for
// requests of many VRAM <-> VRAM descriptors, which a cudaMemcpyAsync each would leave
// bound by the calls, and of small copies between VRAM and mapped pinned host memory, which the
// copy engines pay a setup for each. Both ends of each copy are addressable from the launching
// device's context: its memory, a peer's mapped there through CUDA IPC, or mapped pinned
// host memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvbm::xfer::detail::cuda {

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
// and at 1 MiB that call is most of a request's time (figures: BENCHMARKS.md, "Figures behind the
// code").
constexpr uint64_t kCopyOneMaxBytes = uint64_t{1} << 31;
cudaError_t launch_copy_one(uint64_t src, uint64_t dst, uint64_t len, cudaStream_t stream);

}  // namespace kvbm::xfer::detail::cuda
