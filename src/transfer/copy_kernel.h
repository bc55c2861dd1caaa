// The block copy kernel (copy_kernel.cu): one launch copies every chunk of a list of block
// pairs between two layouts, one CTA per piece of a chunk at a time, 16-byte accesses
// where both ends are 16-byte aligned. Pointers may be device memory or mapped pinned
// host memory.
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
  uint64_t piece;  // a CTA copies at most this many bytes at a time
};

cudaError_t launch_block_copy_kernel(const BlockCopy& job, unsigned grid, unsigned threads,
                                     cudaStream_t stream);

}  // namespace kvbm::detail
#endif
