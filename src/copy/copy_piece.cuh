// The inner loop of kvbm's GPU copy kernels (copy/gpu_copy.cu, both entry points), device
// code only: `width` threads (lanes 0 .. width-1) copy [src, src + len) to dst, each lane
// issuing kUnroll 16-byte loads before their stores where both ends are 16-byte aligned,
// bytes otherwise. The pointers may be device memory, a peer's memory mapped through CUDA
// IPC, or mapped pinned host memory.
#pragma once

#include <cstdint>

namespace kvbm::detail {

template <int kUnroll, typename Index>
__device__ __forceinline__ void copy_piece(uint64_t src, uint64_t dst, Index len, Index lane,
                                           Index width) {
  const char* __restrict__ s = reinterpret_cast<const char*>(src);
  char* __restrict__ d = reinterpret_cast<char*>(dst);
  Index head = 0;
  if (((src | dst) & 15) == 0) {
    const int4* __restrict__ s4 = reinterpret_cast<const int4*>(s);
    int4* __restrict__ d4 = reinterpret_cast<int4*>(d);
    const Index nv = len / 16;
    for (Index j = lane; j < nv; j += kUnroll * width) {
      int4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j + u * width < nv) v[u] = s4[j + u * width];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j + u * width < nv) d4[j + u * width] = v[u];
      }
    }
    head = nv * 16;
  }
  for (Index k = head + lane; k < len; k += width) d[k] = s[k];
}

}  // namespace kvbm::detail
