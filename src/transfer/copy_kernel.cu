#include "transfer/copy_kernel.h"

namespace kvbm::detail {
namespace {

// One CTA copies [src, src + len) to dst.
__device__ void copy_range(uint64_t src, uint64_t dst, uint64_t len) {
  constexpr int kUnroll = 4;
  const char* __restrict__ s = reinterpret_cast<const char*>(src);
  char* __restrict__ d = reinterpret_cast<char*>(dst);
  uint64_t head = 0;
  if (((src | dst) & 15) == 0) {
    const int4* __restrict__ s4 = reinterpret_cast<const int4*>(s);
    int4* __restrict__ d4 = reinterpret_cast<int4*>(d);
    const uint64_t nv = len / 16;
    const uint64_t step = blockDim.x;
    // Every load of a round is issued before its stores, also for chunks smaller than
    // kUnroll * blockDim.x vectors: latency, not bandwidth, bounds a small chunk.
    for (uint64_t j = threadIdx.x; j < nv; j += kUnroll * step) {
      int4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j + u * step < nv) v[u] = s4[j + u * step];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j + u * step < nv) d4[j + u * step] = v[u];
      }
    }
    head = nv * 16;
  }
  for (uint64_t k = head + threadIdx.x; k < len; k += blockDim.x) d[k] = s[k];
}

__device__ uint64_t chunk_addr(const BlockSide& side, uint64_t b, uint64_t l, uint64_t o) {
  return side.bases[side.per_layer ? l : 0] + b * side.block + l * side.layer + o * side.outer;
}

__global__ void block_copy(BlockCopy job) {
  const uint64_t pieces = (job.chunk + job.piece - 1) / job.piece;
  const uint64_t per_layer = uint64_t{job.outer_dim} * pieces;
  const uint64_t per_pair = uint64_t{job.layers} * per_layer;
  const uint64_t items = job.pairs * per_pair;
  for (uint64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const uint64_t pair = it / per_pair;
    uint64_t r = it - pair * per_pair;
    const uint64_t l = r / per_layer;
    r -= l * per_layer;
    const uint64_t o = r / pieces;
    const uint64_t off = (r - o * pieces) * job.piece;
    const uint64_t len = min(job.piece, job.chunk - off);
    copy_range(chunk_addr(job.src, job.ids[2 * pair], l, o) + off,
               chunk_addr(job.dst, job.ids[2 * pair + 1], l, o) + off, len);
  }
}

}  // namespace

cudaError_t launch_block_copy_kernel(const BlockCopy& job, unsigned grid, unsigned threads,
                                     cudaStream_t stream) {
  block_copy<<<grid, threads, 0, stream>>>(job);
  return cudaGetLastError();
}

}  // namespace kvbm::detail
