#include <algorithm>

#include "common/copy_piece.cuh"
#include "xfer/backends/cuda/copy_list.h"

namespace kvbm::xfer::detail::cuda {
namespace {

constexpr unsigned kThreads = 512;  // 16 warps per CTA
constexpr unsigned kMaxCtas = 1024;

// Warps stride over the pieces, each copying one piece at a time; a piece's table entry
// is read by every lane of its warp (one broadcast load).
__global__ void copy_list(const CopyPiece* __restrict__ pieces, uint32_t count) {
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const uint32_t warps = gridDim.x * blockDim.x / 32;
  for (uint32_t i = warp; i < count; i += warps) {
    const CopyPiece p = pieces[i];
    kvbm::detail::copy_piece<4, uint32_t>(p.src, p.dst, static_cast<uint32_t>(p.len), lane, 32u);
  }
}

// CTAs stride over slices of one copy: each thread issues its 4 loads of a slice at once.
constexpr uint32_t kSliceBytes = kThreads * 16 * 4;

__global__ void copy_one(uint64_t src, uint64_t dst, uint32_t len) {
  for (uint32_t off = blockIdx.x * kSliceBytes; off < len; off += gridDim.x * kSliceBytes) {
    // Slices start at multiples of 16: each keeps the alignment of the whole copy.
    kvbm::detail::copy_piece<4, uint32_t>(src + off, dst + off, min(kSliceBytes, len - off),
                                          threadIdx.x, kThreads);
  }
}

}  // namespace

cudaError_t launch_copy_one(uint64_t src, uint64_t dst, uint64_t len, cudaStream_t stream) {
  if (len == 0) return cudaSuccess;
  if (len > kCopyOneMaxBytes) return cudaErrorInvalidValue;
  const uint64_t slices = (len + kSliceBytes - 1) / kSliceBytes;
  const auto grid = static_cast<unsigned>(std::min<uint64_t>(slices, kMaxCtas));
  copy_one<<<grid, kThreads, 0, stream>>>(src, dst, static_cast<uint32_t>(len));
  return cudaGetLastError();
}

cudaError_t launch_copy_list(const CopyPiece* pieces, uint32_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const unsigned warps_per_cta = kThreads / 32;
  const unsigned grid = std::min<unsigned>((count + warps_per_cta - 1) / warps_per_cta, kMaxCtas);
  copy_list<<<grid, kThreads, 0, stream>>>(pieces, count);
  return cudaGetLastError();
}

}  // namespace kvbm::xfer::detail::cuda
