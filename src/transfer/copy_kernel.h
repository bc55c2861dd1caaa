// The gather/scatter copy kernel (copy_kernel.cu): one launch copies every entry of a
// table of (src, dst, len) pieces, one CTA per piece at a time, 16-byte accesses where
// both ends are 16-byte aligned. Pointers may be device memory or mapped pinned host memory.
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace kvbm::detail {

struct CopyEntry {
  uint64_t src;
  uint64_t dst;
  uint64_t len;
};

// Launches the kernel on `stream` over `n` entries of `table` (device-readable memory).
cudaError_t launch_copy_kernel(const CopyEntry* table, size_t n, unsigned grid, unsigned threads,
                               cudaStream_t stream);

}  // namespace kvbm::detail
#endif
