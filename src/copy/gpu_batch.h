// Copy-engine copies of a list (gpu_copy.h says why src/copy exists): one
// cudaMemcpyBatchAsync, whose copy engines overlap their per-copy setup, or a
// cudaMemcpyAsync each where the driver lacks the batch call. The transfer engine's Cuda
// path and the CUDA backend's requests both queue their copy-engine copies here; each
// keeps its own choice of when (transfer/host_engines.h, backends/cuda/copy_request.cc).
// Thread safety: a CopyList is used by one caller at a time.
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <vector>

#include "copy/chunk.h"

namespace kvbm::detail {

// The argument arrays of cudaMemcpyBatchAsync, reused across requests (so a request
// allocates nothing once they have grown to its size).
struct CopyList {
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;

  size_t size() const { return sizes.size(); }
  void clear() {
    dsts.clear();
    srcs.clear();
    sizes.clear();
  }
  void add(void* dst, const void* src, size_t len) {
    dsts.push_back(dst);
    srcs.push_back(src);
    sizes.push_back(len);
  }
  // Replaces the list with `chunks` (addresses of this process).
  void assign(std::span<const Chunk> chunks);
};

// Queues copies [from, to) of `list` on `stream` as one cudaMemcpyBatchAsync, each source
// read in stream order. cudaErrorNotSupported / cudaErrorCallRequiresNewerDriver where the
// driver lacks it (batch_unsupported).
cudaError_t memcpy_batch(const CopyList& list, size_t from, size_t to, cudaStream_t stream);
// Whether memcpy_batch's error says the driver lacks the call (not sticky: the caller goes
// on with memcpy_each).
bool batch_unsupported(cudaError_t e);
// Queues copies [from, to) of `list` on `stream` with a cudaMemcpyAsync each; on failure
// `*failed` is the index of the copy that failed.
cudaError_t memcpy_each(const CopyList& list, size_t from, size_t to, cudaStream_t stream,
                        size_t* failed);

}  // namespace kvbm::detail
#endif
