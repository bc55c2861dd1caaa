#include "transfer/copy_kernel.h"

namespace kvbm::detail {
namespace {

__global__ void gather_copy(const CopyEntry* __restrict__ table, size_t n) {
  for (size_t i = blockIdx.x; i < n; i += gridDim.x) {
    const CopyEntry e = table[i];
    const char* s = reinterpret_cast<const char*>(e.src);
    char* d = reinterpret_cast<char*>(e.dst);
    uint64_t head = 0;
    if (((e.src | e.dst) & 15) == 0) {
      const int4* s4 = reinterpret_cast<const int4*>(s);
      int4* d4 = reinterpret_cast<int4*>(d);
      const uint64_t nv = e.len / 16;
      const uint64_t step = blockDim.x;
      uint64_t j = threadIdx.x;
      // Four loads in flight per thread before the stores: latency hiding over PCIe.
      for (; j + 3 * step < nv; j += 4 * step) {
        int4 a = s4[j];
        int4 b = s4[j + step];
        int4 c = s4[j + 2 * step];
        int4 f = s4[j + 3 * step];
        d4[j] = a;
        d4[j + step] = b;
        d4[j + 2 * step] = c;
        d4[j + 3 * step] = f;
      }
      for (; j < nv; j += step) d4[j] = s4[j];
      head = nv * 16;
    }
    for (uint64_t k = head + threadIdx.x; k < e.len; k += blockDim.x) d[k] = s[k];
  }
}

}  // namespace

cudaError_t launch_copy_kernel(const CopyEntry* table, size_t n, unsigned grid, unsigned threads,
                               cudaStream_t stream) {
  gather_copy<<<grid, threads, 0, stream>>>(table, n);
  return cudaGetLastError();
}

}  // namespace kvbm::detail
