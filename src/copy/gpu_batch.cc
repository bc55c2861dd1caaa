#include "copy/gpu_batch.h"

#if KVBM_HAVE_CUDA

namespace kvbm::detail {

void CopyList::assign(std::span<const Chunk> chunks) {
  const size_t n = chunks.size();
  dsts.resize(n);
  srcs.resize(n);
  sizes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    dsts[i] = reinterpret_cast<void*>(chunks[i].dst);
    srcs[i] = reinterpret_cast<const void*>(chunks[i].src);
    sizes[i] = chunks[i].len;
  }
}

cudaError_t memcpy_batch(const CopyList& list, size_t from, size_t to, cudaStream_t stream) {
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t first = 0;
  return cudaMemcpyBatchAsync(list.dsts.data() + from, list.srcs.data() + from,
                              list.sizes.data() + from, to - from, &attr, &first, 1, stream);
}

bool batch_unsupported(cudaError_t e) {
  return e == cudaErrorNotSupported || e == cudaErrorCallRequiresNewerDriver;
}

cudaError_t memcpy_each(const CopyList& list, size_t from, size_t to, cudaStream_t stream,
                        size_t* failed) {
  for (size_t i = from; i < to; ++i) {
    const cudaError_t e =
        cudaMemcpyAsync(list.dsts[i], list.srcs[i], list.sizes[i], cudaMemcpyDefault, stream);
    if (e != cudaSuccess) {
      if (failed != nullptr) *failed = i;
      return e;
    }
  }
  return cudaSuccess;
}

}  // namespace kvbm::detail
#endif
