// The engines of the Cuda path between pinned host memory and a GPU (CudaHostEngine,
// include/kvbm/transfer.h), and the probe that chooses between them on the machine: the
// block copy kernel reading mapped pinned memory, the copy engines through one
// cudaMemcpyBatchAsync, both at once, or (host -> GPU) a CPU gather into pinned staging
// with one DMA and a scatter kernel (copy/gpu_gather.h). Which wins depends on the machine
// and driver, and on the chunk size.
#pragma once

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "copy/gpu_batch.h"
#include "copy/gpu_copy.h"
#include "copy/gpu_gather.h"
#include "kvbm/result.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

// Chunk size classes the choice is made for: up to 16 KiB, 64 KiB, 256 KiB, larger.
constexpr size_t kHostEngineClasses = 4;
size_t host_engine_class(size_t chunk_bytes);
// The chunk size the probe times for a class.
size_t host_engine_class_bytes(size_t cls);

// Side streams a batch spreads over, with the events that fork them from the request's
// stream and join them back: the copy engines take more of the link from several queues
// than from one. And the kernel's own stream for CudaHostEngine::Split, so that it runs
// beside the batch. Made and destroyed on the current device; used by one caller at a time.
constexpr size_t kBatchLanes = 4;
struct BatchLanes {
  std::array<cudaStream_t, kBatchLanes - 1> side{};
  std::array<cudaEvent_t, kBatchLanes> events{};  // [0] forks, [1 + i] joins side[i]
  cudaStream_t kernel = nullptr;
  std::array<cudaEvent_t, 2> kernel_events{};  // [0] forks the kernel's stream, [1] joins it
  cudaError_t create();
  void destroy();
};

// Queues every chunk as cudaMemcpyBatchAsync (copy/gpu_batch.h) on `stream` (the current device's):
// one call, or with `lanes`, a request of several lane-sized parts split over the stream and the
// side streams, all joined back into `stream` (what follows on it waits for every part).
// cudaErrorNotSupported / cudaErrorCallRequiresNewerDriver where the driver lacks it.
cudaError_t enqueue_batch(std::span<const Chunk> chunks, CopyList& args, cudaStream_t stream,
                          const BatchLanes* lanes = nullptr);

struct HostEngineRates {
  double kernel_gbps = 0;
  double batch_gbps = 0;  // 0 where the batch call is not supported
  double split_gbps = 0;  // both at once, the kernel taking kernel_share of the chunks
  double kernel_share = 0;
  double gather_gbps = 0;  // host -> GPU only, where a gather stage was given
  // The gather with the kernel beside it on disjoint chunks, the kernel taking
  // gather_kernel_share of them: they share the link, but not what bounds each alone (the
  // kernel its reads in flight across PCIe, the gather the host's memory).
  double gather_split_gbps = 0;
  double gather_kernel_share = 0;
};

// What the gather engine needs to be timed: its stage and the host threads that gather.
struct GatherProbe {
  GatherStage* stage = nullptr;
  HostPool* pool = nullptr;
};

// Times the engines on the current device copying `bytes` of `pinned` (mapped pinned
// memory) to `device` (to_device) or back, in chunks of `chunk` bytes in a scattered order:
// the kernel, the batch, (where the batch works) both at once with the kernel's share in
// proportion to the two rates, and (to_device, with `gather`) the gather stage alone and
// with the kernel beside it (shared the same way), timed from the call to the stream's end
// since the gather's CPU part runs in the call; the best of a few runs each, after a
// warm-up. CUDA's error if a copy fails.
Result<HostEngineRates> probe_host_engines(bool to_device, size_t chunk, void* pinned, void* device,
                                           size_t bytes, const CopyLaunch& launch, uint64_t piece,
                                           cudaStream_t stream, const BatchLanes* lanes,
                                           const GatherProbe& gather = {});

}  // namespace kvbm::detail
#endif
