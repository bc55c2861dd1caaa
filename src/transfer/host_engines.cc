#include "transfer/host_engines.h"

#if KVBM_HAVE_CUDA
#include <algorithm>
#include <chrono>

#include "common/cuda_util.h"

namespace kvbm::detail {
namespace {

constexpr size_t kClassBytes[kHostEngineClasses] = {16 << 10, 64 << 10, 256 << 10, 2 << 20};
constexpr int kRuns = 3;

// Destroys what the probe created, whatever way it leaves.
struct ProbeResources {
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  void* ids = nullptr;    // device: the kernel's (source, destination) id pairs
  void* bases = nullptr;  // device: one region base per side
  ~ProbeResources() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (ids != nullptr) cudaFree(ids);
    if (bases != nullptr) cudaFree(bases);
    cudaGetLastError();
  }
};

// Scattered but covering every chunk once: n is a power of two and the factor odd.
size_t scattered(size_t i, size_t n) {
  return (i * 7919) & (n - 1);
}

// Seconds of the fastest of kRuns runs of `enqueue` (after a warm-up run).
template <typename Enqueue>
Result<double> best_seconds(ProbeResources& r, cudaStream_t stream, Enqueue enqueue) {
  double best = 0;
  for (int run = 0; run <= kRuns; ++run) {
    cudaError_t e = cudaEventRecord(r.start, stream);
    if (e == cudaSuccess) e = enqueue();
    if (e == cudaSuccess) e = cudaEventRecord(r.stop, stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(r.stop);
    float ms = 0;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, r.start, r.stop);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return cuda_error(ErrorCode::Internal, e, "timing a probe copy");
    }
    if (run > 0 && (best == 0 || ms / 1e3 < best)) best = ms / 1e3;
  }
  return best;
}

// As best_seconds, by the clock from the call of `enqueue` to the stream's end: for an
// engine whose work starts on the CPU in the call.
template <typename Enqueue>
Result<double> best_wall_seconds(cudaStream_t stream, Enqueue enqueue) {
  double best = 0;
  for (int run = 0; run <= kRuns; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    auto queued = enqueue();
    if (!queued) return queued.error();
    if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess) {
      cudaGetLastError();
      return cuda_error(ErrorCode::Internal, e, "timing a probe copy");
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (run > 0 && (best == 0 || s < best)) best = s;
  }
  return best;
}

}  // namespace

size_t host_engine_class(size_t chunk_bytes) {
  for (size_t c = 0; c + 1 < kHostEngineClasses; ++c) {
    if (chunk_bytes <= kClassBytes[c]) return c;
  }
  return kHostEngineClasses - 1;
}

size_t host_engine_class_bytes(size_t cls) {
  return kClassBytes[std::min(cls, kHostEngineClasses - 1)];
}

cudaError_t BatchLanes::create() {
  for (cudaStream_t& s : side) {
    if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess)
      return e;
  }
  for (cudaEvent_t* e :
       {&events[0], &events[1], &events[2], &events[3], &kernel_events[0], &kernel_events[1]}) {
    if (cudaError_t r = cudaEventCreateWithFlags(e, cudaEventDisableTiming); r != cudaSuccess)
      return r;
  }
  return cudaStreamCreateWithFlags(&kernel, cudaStreamNonBlocking);
}

void BatchLanes::destroy() {
  for (cudaStream_t& s : side) {
    if (s != nullptr) cudaStreamDestroy(s);
    s = nullptr;
  }
  for (cudaEvent_t* e :
       {&events[0], &events[1], &events[2], &events[3], &kernel_events[0], &kernel_events[1]}) {
    if (*e != nullptr) cudaEventDestroy(*e);
    *e = nullptr;
  }
  if (kernel != nullptr) cudaStreamDestroy(kernel);
  kernel = nullptr;
}

namespace {

// A part of a batch below this stays on one queue: splitting costs a few calls.
constexpr uint64_t kLaneMinBytes = 4 << 20;

size_t lanes_for(std::span<const Chunk> chunks, const BatchLanes* lanes) {
  if (lanes == nullptr) return 1;
  uint64_t bytes = 0;
  for (const Chunk& c : chunks) bytes += c.len;
  return static_cast<size_t>(
      std::clamp<uint64_t>(bytes / kLaneMinBytes, 1, std::min(kBatchLanes, chunks.size())));
}

}  // namespace

cudaError_t enqueue_batch(std::span<const Chunk> chunks, CopyList& args, cudaStream_t stream,
                          const BatchLanes* lanes) {
  const size_t n = chunks.size();
  if (n == 0) return cudaSuccess;
  args.assign(chunks);
  const size_t parts = lanes_for(chunks, lanes);
  if (parts == 1) return memcpy_batch(args, 0, n, stream);
  // Fork: each side stream starts after what the request's stream holds so far.
  cudaError_t e = cudaEventRecord(lanes->events[0], stream);
  for (size_t p = 1; p < parts && e == cudaSuccess; ++p) {
    cudaStream_t side = lanes->side[p - 1];
    e = cudaStreamWaitEvent(side, lanes->events[0], 0);
    if (e == cudaSuccess) e = memcpy_batch(args, n * p / parts, n * (p + 1) / parts, side);
    if (e == cudaSuccess) e = cudaEventRecord(lanes->events[p], side);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(stream, lanes->events[p], 0);
  }
  if (e == cudaSuccess) e = memcpy_batch(args, 0, n / parts, stream);
  return e;
}

namespace {

// Gbps of `bytes` moved in `seconds`.
double rate(size_t bytes, double seconds) {
  return static_cast<double>(bytes) / seconds / 1e9;
}

// The kernel's share beside another engine: in proportion to the two engines' rates alone.
double kernel_share_beside(double kernel_gbps, double other_gbps) {
  return kernel_gbps / (kernel_gbps + other_gbps);
}

// The first pairs of `job`, `share` of `n` (at least one pair, and one left).
BlockCopy kernel_part(const BlockCopy& job, size_t n, double share) {
  BlockCopy part = job;
  part.pairs = std::clamp<size_t>(static_cast<size_t>(static_cast<double>(n) * share), 1, n - 1);
  return part;
}

// Starts `part` on the lanes' kernel stream, forked from `stream`; the caller joins it back
// (a wait on kernel_events[1]) after queueing the other engine's share.
cudaError_t fork_kernel(const BlockCopy& part, const CopyLaunch& launch, cudaStream_t stream,
                        const BatchLanes& lanes) {
  cudaError_t e = cudaEventRecord(lanes.kernel_events[0], stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(lanes.kernel, lanes.kernel_events[0], 0);
  if (e == cudaSuccess) e = launch_block_copy_kernel(part, launch, lanes.kernel);
  if (e == cudaSuccess) e = cudaEventRecord(lanes.kernel_events[1], lanes.kernel);
  return e;
}

// The gather alone, then (with a kernel stream) with the kernel beside it on the first
// pairs of `job` (kernel_part).
Status probe_gather(const BlockCopy& job, std::span<const Chunk> chunks, const CopyLaunch& launch,
                    cudaStream_t stream, const BatchLanes* lanes, const GatherProbe& gather,
                    HostEngineRates& rates) {
  const size_t bytes = job.pairs * job.chunk;
  auto alone = best_wall_seconds(
      stream, [&] { return gather.stage->enqueue(chunks, *gather.pool, stream); });
  if (!alone) return alone.error();
  rates.gather_gbps = rate(bytes, *alone);
  const size_t n = chunks.size();
  if (lanes == nullptr || n < 2) return {};
  const double share = kernel_share_beside(rates.kernel_gbps, rates.gather_gbps);
  const BlockCopy part = kernel_part(job, n, share);
  auto both = best_wall_seconds(stream, [&]() -> Status {
    cudaError_t e = fork_kernel(part, launch, stream, *lanes);
    if (e != cudaSuccess) return cuda_error(ErrorCode::Internal, e, "starting the probe's kernel");
    Status gathered = gather.stage->enqueue(chunks.subspan(part.pairs), *gather.pool, stream);
    e = cudaStreamWaitEvent(stream, lanes->kernel_events[1], 0);
    if (!gathered) return gathered;
    if (e != cudaSuccess) return cuda_error(ErrorCode::Internal, e, "joining the probe's kernel");
    return {};
  });
  if (!both) return both.error();
  rates.gather_split_gbps = rate(bytes, *both);
  rates.gather_kernel_share = share;
  return {};
}

}  // namespace

Result<HostEngineRates> probe_host_engines(bool to_device, size_t chunk, void* pinned, void* device,
                                           size_t bytes, const CopyLaunch& launch, uint64_t piece,
                                           cudaStream_t stream, const BatchLanes* lanes,
                                           const GatherProbe& gather) {
  size_t n = 1;
  while (n * 2 * chunk <= bytes) n *= 2;
  ProbeResources r;
  cudaError_t e = cudaEventCreate(&r.start);
  if (e == cudaSuccess) e = cudaEventCreate(&r.stop);
  if (e == cudaSuccess) e = cudaMalloc(&r.ids, 2 * n * sizeof(uint64_t));
  if (e == cudaSuccess) e = cudaMalloc(&r.bases, 2 * sizeof(uint64_t));
  if (e != cudaSuccess) return cuda_error(ErrorCode::Internal, e, "setting up the copy probe");

  const auto src = reinterpret_cast<uint64_t>(to_device ? pinned : device);
  const auto dst = reinterpret_cast<uint64_t>(to_device ? device : pinned);
  std::vector<uint64_t> ids(2 * n);
  std::vector<Chunk> chunks(n);
  for (size_t i = 0; i < n; ++i) {
    ids[2 * i] = i;
    ids[2 * i + 1] = scattered(i, n);
    chunks[i] = {src + i * chunk, dst + scattered(i, n) * chunk, chunk, 0, 0};
  }
  const uint64_t bases[2] = {src, dst};
  e = cudaMemcpy(r.ids, ids.data(), ids.size() * sizeof(uint64_t), cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaMemcpy(r.bases, bases, sizeof(bases), cudaMemcpyHostToDevice);
  if (e != cudaSuccess) return cuda_error(ErrorCode::Internal, e, "uploading the probe's table");

  const auto* dev_bases = static_cast<const uint64_t*>(r.bases);
  BlockCopy job{};
  job.src = {dev_bases, chunk, 0, 0, 0};
  job.dst = {dev_bases + 1, chunk, 0, 0, 0};
  job.ids = static_cast<const uint64_t*>(r.ids);
  job.pairs = n;
  job.layers = 1;
  job.outer_dim = 1;
  job.chunk = chunk;
  job.piece = piece;
  auto kernel =
      best_seconds(r, stream, [&] { return launch_block_copy_kernel(job, launch, stream); });
  if (!kernel) return kernel.error();
  HostEngineRates rates;
  rates.kernel_gbps = rate(n * chunk, *kernel);
  if (to_device && gather.stage != nullptr && gather.pool != nullptr) {
    KVBM_TRY(probe_gather(job, chunks, launch, stream, lanes, gather, rates));
  }
  CopyList args;
  auto batch = best_seconds(r, stream, [&] { return enqueue_batch(chunks, args, stream, lanes); });
  if (!batch || lanes == nullptr || n < 2) return rates;
  rates.batch_gbps = rate(n * chunk, *batch);
  // Both at once: the kernel on the first pairs on its own stream, the batch the rest.
  rates.kernel_share = kernel_share_beside(rates.kernel_gbps, rates.batch_gbps);
  const BlockCopy part = kernel_part(job, n, rates.kernel_share);
  const std::span<const Chunk> rest = std::span<const Chunk>(chunks).subspan(part.pairs);
  auto split = best_seconds(r, stream, [&] {
    cudaError_t e = fork_kernel(part, launch, stream, *lanes);
    if (e == cudaSuccess) e = enqueue_batch(rest, args, stream, lanes);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(stream, lanes->kernel_events[1], 0);
    return e;
  });
  if (split) rates.split_gbps = rate(n * chunk, *split);
  return rates;
}

}  // namespace kvbm::detail
#endif
