#include "transfer/cuda_copier.h"

#include "transfer/cuda_tuning.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "common/cuda_util.h"
#include "copy/gpu_batch.h"
#include "copy/gpu_copy.h"
#include "kvbm/log.h"
#include "transfer/host_engines.h"

namespace kvbm::detail {

#if KVBM_HAVE_CUDA

namespace {
// Requests in flight on the stream before a new one waits for the oldest to finish (its
// table is reused): enough for a layer-by-layer load of a whole model to be queued at once,
// so that its first layer is usable before the caller has queued the last.
constexpr size_t kSlots = 64;

// The fastest engine of a probe; both at once only when that beats either alone by more
// than the probe's noise (it costs a second stream and two events), and the gather only
// when it beats the GPU's own engines by more again (it costs the host's threads). Where
// the gather wins, *gather_share is the kernel's share beside it (0: the gather alone).
CudaHostEngine choose(const HostEngineRates& r, double* gather_share) {
  const double single = std::max(r.kernel_gbps, r.batch_gbps);
  CudaHostEngine best =
      r.batch_gbps > r.kernel_gbps ? CudaHostEngine::Batch : CudaHostEngine::Kernel;
  double rate = single;
  if (r.split_gbps > single * 1.03) {
    best = CudaHostEngine::Split;
    rate = r.split_gbps;
  }
  double gather = r.gather_gbps;
  *gather_share = 0;
  if (r.gather_split_gbps > gather * 1.03) {
    gather = r.gather_split_gbps;
    *gather_share = r.gather_kernel_share;
  }
  if (gather > rate * 1.05) return CudaHostEngine::Gather;
  *gather_share = 0;
  return best;
}

// One line of the probe's log: each engine's rate, and the choice.
std::string describe(const HostEngineRates& r, CudaHostEngine chosen, double gather_share) {
  std::ostringstream o;
  o.precision(3);
  o << "kernel " << r.kernel_gbps << ", batch " << r.batch_gbps << ", split " << r.split_gbps;
  if (r.gather_gbps > 0) {
    o << ", gather " << r.gather_gbps << ", gather+kernel " << r.gather_split_gbps;
  }
  o << " GB/s: " << to_string(chosen);
  if (gather_share > 0) o << "+kernel (share " << gather_share << ")";
  return o.str();
}

CopyKernel copy_kernel(CudaCopyKernel k) {
  switch (k) {
    case CudaCopyKernel::Cta:
      return CopyKernel::Cta;
    case CudaCopyKernel::Warp:
      return CopyKernel::Warp;
    case CudaCopyKernel::Baseline:
      break;
  }
  return CopyKernel::Baseline;
}
}  // namespace

struct CudaCopier::State {
  struct Slot {
    void* host = nullptr;  // pinned: the table, filled by the CPU
    void* dev = nullptr;   // its uploaded copy, which the kernel reads
    size_t capacity = 0;   // bytes
    cudaEvent_t done = nullptr;
    uint64_t generation = 0;
  };

  int ordinal = 0;
  TransferEngineOptions options;
  CudaTuning tuning;  // the options' (or the defaults), copied once
  bool pageable = false;
  unsigned sms = 1;
  cudaStream_t stream = nullptr;
  std::mutex mu;
  std::array<Slot, kSlots> slots;
  size_t next = 0;
  CopyList copies;           // under mu: the copy-engine copies of the request being queued
  BatchLanes lanes;          // under mu
  HostPool* pool = nullptr;  // the engine's host threads (CudaHostEngine::Gather)
  std::unique_ptr<GatherStage> gather;  // under mu: made on first use

  // The host engine of each direction (0: to the GPU) and chunk class, once measured.
  std::once_flag probed;
  std::array<std::array<CudaHostEngine, kHostEngineClasses>, 2> engines{};
  // Split: the kernel's share of a request's blocks, per direction and class (measured;
  // half where forced without a measurement).
  std::array<std::array<double, kHostEngineClasses>, 2> kernel_share{};
  // Gather (to the GPU): the kernel's share beside it, per class (0: the gather alone).
  std::array<double, kHostEngineClasses> gather_share{};
  std::atomic<bool> batch_supported{true};

  CopyLaunch launch() const {
    CopyLaunch l;
    l.kernel = copy_kernel(tuning.kernel);
    l.max_ctas =
        static_cast<unsigned>(std::min<uint64_t>(uint64_t{sms} * tuning.ctas_per_sm, UINT32_MAX));
    l.threads = tuning.threads;
    l.index64 = tuning.index64;
    return l;
  }
  void probe_engines();
  // The gather stage, made on first use. Called with mu held, on the device.
  Result<GatherStage*> gather_stage() {
    if (!gather) {
      auto g = GatherStage::create();
      if (!g) return g.error();
      gather = std::move(*g);
    }
    return gather.get();
  }
  Result<size_t> enqueue_blocks(Slot& slot, const Layout& src, std::span<const size_t> src_ids,
                                const Layout& dst, std::span<const size_t> dst_ids,
                                cudaStream_t on);
  Status enqueue_rest(CudaHostEngine rest, std::span<const Chunk> chunks);

  ~State() {
    DeviceGuard guard(ordinal);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    gather.reset();
    for (Slot& s : slots) {
      if (s.host != nullptr) cudaFreeHost(s.host);
      if (s.dev != nullptr) cudaFree(s.dev);
      if (s.done != nullptr) cudaEventDestroy(s.done);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
    lanes.destroy();
    cudaGetLastError();
  }

  // The next slot, once its previous request is done (its table may be overwritten).
  // Called with mu held.
  Result<size_t> acquire() {
    const size_t index = next++ % kSlots;
    Slot& slot = slots[index];
    cudaError_t e = cudaEventSynchronize(slot.done);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return cuda_error(ErrorCode::Internal, e, "waiting for an earlier block copy");
    }
    ++slot.generation;
    return index;
  }

  // Grows the slot's table to at least `bytes` (pinned and device copies).
  Status grow(Slot& slot, size_t bytes) {
    if (slot.capacity >= bytes) return {};
    const size_t cap = std::max<size_t>({bytes, 2 * slot.capacity, 64 << 10});
    if (slot.host != nullptr) cudaFreeHost(slot.host);
    if (slot.dev != nullptr) cudaFree(slot.dev);
    slot.host = nullptr;
    slot.dev = nullptr;
    slot.capacity = 0;
    cudaError_t e = cudaHostAlloc(&slot.host, cap, cudaHostAllocDefault);
    if (e != cudaSuccess) {
      slot.host = nullptr;
      cudaGetLastError();
      return cuda_error(ErrorCode::Internal, e,
                        "cudaHostAlloc of a " + std::to_string(cap) + "-byte chunk table");
    }
    if ((e = cudaMalloc(&slot.dev, cap)) != cudaSuccess) {
      slot.dev = nullptr;
      cudaGetLastError();
      return cuda_error(ErrorCode::Internal, e,
                        "cudaMalloc of a " + std::to_string(cap) + "-byte chunk table");
    }
    slot.capacity = cap;
    return {};
  }

  // A CUDA call's failure, its (non-sticky) error cleared.
  static Error cuda_failure(cudaError_t code, const std::string& what) {
    cudaGetLastError();
    return cuda_error(ErrorCode::Internal, code, what);
  }
  // A failed submission: whatever was queued before it still guards the slot's next reuse.
  Error fail(Slot& slot, const Error& why) {
    cudaEventRecord(slot.done, stream);
    cudaGetLastError();
    return why;
  }

  // Done (with its outcome) or not yet, for the request that used slot `i` at `generation`.
  std::optional<Status> query(size_t i, uint64_t generation) {
    std::lock_guard lock(mu);
    Slot& s = slots[i];
    if (s.generation != generation) return Status{};  // the slot was reused: it finished
    DeviceGuard guard(ordinal);
    cudaError_t e = cudaEventQuery(s.done);
    if (e == cudaSuccess) return Status{};
    if (e == cudaErrorNotReady) return std::nullopt;
    cudaGetLastError();
    return Status(
        cuda_error(ErrorCode::Internal, e, "block copy on GPU " + std::to_string(ordinal)));
  }
};

namespace {

class CudaTransfer final : public Transfer::Impl {
 public:
  CudaTransfer(CudaCopier::State* state, size_t slot, uint64_t generation, uint64_t bytes,
               size_t chunks)
      : Impl(TransferPath::Cuda, bytes, chunks), state_(state), slot_(slot), gen_(generation) {}
  ~CudaTransfer() override { (void)wait(std::chrono::hours(24 * 365)); }

  bool ready() override {
    if (!result_) result_ = state_->query(slot_, gen_);
    return result_.has_value();
  }
  Status wait(std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (unsigned spins = 0; !ready(); ++spins) {
      if (std::chrono::steady_clock::now() >= deadline) {
        return err(ErrorCode::Timeout, "block copy on GPU ", state_->ordinal,
                   " not finished after ", timeout.count(), " ms");
      }
      if (spins < 1000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
    return *result_;
  }

 private:
  CudaCopier::State* state_;
  size_t slot_;
  uint64_t gen_;
  std::optional<Status> result_;
};

// The steps every submission shares: the lock and the device, the next slot (once its
// previous request has finished), `enqueue(slot)` (queues the request's copies on the
// stream; the number of chunks they copy), the slot's event, and the handle that waits on
// it. Whatever fails, the event is recorded: what was queued still guards the slot.
template <typename Enqueue>
Result<std::unique_ptr<Transfer::Impl>> submit_in_slot(CudaCopier::State* st, uint64_t bytes,
                                                       Enqueue&& enqueue) {
  std::lock_guard lock(st->mu);
  DeviceGuard guard(st->ordinal);
  auto acquired = st->acquire();
  if (!acquired) return acquired.error();
  CudaCopier::State::Slot& slot = st->slots[*acquired];
  Result<size_t> chunks = enqueue(slot);
  if (!chunks) return st->fail(slot, chunks.error());
  if (cudaError_t e = cudaEventRecord(slot.done, st->stream); e != cudaSuccess) {
    return st->fail(slot, CudaCopier::State::cuda_failure(e, "cudaEventRecord"));
  }
  return std::unique_ptr<Transfer::Impl>(
      new CudaTransfer(st, *acquired, slot.generation, bytes, *chunks));
}

}  // namespace

Result<std::unique_ptr<CudaCopier>> CudaCopier::create(int ordinal,
                                                       const TransferEngineOptions& options,
                                                       HostPool& pool) {
  KVBM_TRY(check_device(ordinal));
  DeviceGuard guard(ordinal);
  auto st = std::make_unique<State>();
  st->ordinal = ordinal;
  st->pool = &pool;
  st->options = options;
  st->tuning = cuda_tuning(options);
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrPageableMemoryAccess, ordinal) == cudaSuccess)
    st->pageable = v != 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, ordinal) == cudaSuccess && v > 0)
    st->sms = static_cast<unsigned>(v);
  cudaError_t e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cuda_error(ErrorCode::DeviceUnavailable, e, "cudaStreamCreate");
  }
  if ((e = st->lanes.create()) != cudaSuccess) {
    cudaGetLastError();
    return cuda_error(ErrorCode::DeviceUnavailable, e, "creating the copy engines' side streams");
  }
  for (auto& s : st->slots) {
    e = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return cuda_error(ErrorCode::DeviceUnavailable, e, "cudaEventCreate");
    }
  }
  return std::unique_ptr<CudaCopier>(new CudaCopier(std::move(st)));
}

Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit(std::span<const Chunk> chunks,
                                                           uint64_t bytes) {
  State* st = state_.get();
  return submit_in_slot(st, bytes, [&](State::Slot&) -> Result<size_t> {
    st->copies.assign(chunks);
    if (cudaError_t e = memcpy_each(st->copies, 0, chunks.size(), st->stream, nullptr);
        e != cudaSuccess) {
      return State::cuda_failure(e, "cudaMemcpyAsync of a block chunk");
    }
    return chunks.size();
  });
}

// Uploads the slot's table of block ids and launches the kernel over it on `stream`;
// the number of chunks it copies. Called with mu held.
Result<size_t> CudaCopier::State::enqueue_blocks(Slot& slot, const Layout& src,
                                                 std::span<const size_t> src_ids, const Layout& dst,
                                                 std::span<const size_t> dst_ids, cudaStream_t on) {
  // The table: each side's region addresses, then (source id, destination id) pairs.
  const Layout::Strides ss = src.strides();
  const Layout::Strides ds = dst.strides();
  const size_t layers = src.config().num_layers;
  const size_t ns = ss.per_layer_regions ? layers : 1;
  const size_t nd = ds.per_layer_regions ? layers : 1;
  const size_t pairs = src_ids.size();
  const size_t words = ns + nd + 2 * pairs;
  KVBM_TRY(grow(slot, words * sizeof(uint64_t)));
  auto* table = static_cast<uint64_t*>(slot.host);
  for (size_t i = 0; i < ns; ++i) table[i] = src.region(i).addr();
  for (size_t i = 0; i < nd; ++i) table[ns + i] = dst.region(i).addr();
  uint64_t* ids = table + ns + nd;
  for (size_t i = 0; i < pairs; ++i) {
    ids[2 * i] = src_ids[i];
    ids[2 * i + 1] = dst_ids[i];
  }
  cudaError_t e =
      cudaMemcpyAsync(slot.dev, slot.host, words * sizeof(uint64_t), cudaMemcpyHostToDevice, on);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cuda_error(ErrorCode::Internal, e, "uploading the block table");
  }
  const auto* dev = static_cast<const uint64_t*>(slot.dev);
  BlockCopy job{};
  job.src = {dev, ss.block, ss.layer, ss.outer, ss.per_layer_regions};
  job.dst = {dev + ns, ds.block, ds.layer, ds.outer, ds.per_layer_regions};
  job.ids = dev + ns + nd;
  job.pairs = pairs;
  job.layers = static_cast<uint32_t>(layers);
  job.outer_dim = static_cast<uint32_t>(src.config().outer_dim);
  job.chunk = src.config().chunk_bytes();
  job.piece = tuning.max_piece;
  if ((e = launch_block_copy_kernel(job, launch(), on)) != cudaSuccess) {
    cudaGetLastError();
    return cuda_error(ErrorCode::Internal, e, "launching the block copy kernel");
  }
  return pairs * layers * job.outer_dim;
}

Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_blocks(const Layout& src,
                                                                  std::span<const size_t> src_ids,
                                                                  const Layout& dst,
                                                                  std::span<const size_t> dst_ids,
                                                                  uint64_t bytes) {
  State* st = state_.get();
  return submit_in_slot(st, bytes, [&](State::Slot& slot) {
    return st->enqueue_blocks(slot, src, src_ids, dst, dst_ids, st->stream);
  });
}

Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_split(
    const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
    std::span<const size_t> dst_ids, std::span<const Chunk> chunks, uint64_t bytes,
    CudaHostEngine rest) {
  State* st = state_.get();
  return submit_in_slot(st, bytes, [&](State::Slot& slot) -> Result<size_t> {
    BatchLanes& lanes = st->lanes;
    // The kernel's stream forks from the request's stream, runs beside the rest, and is
    // joined back before the slot's event (also on failure: its table upload may be queued).
    cudaError_t e = cudaEventRecord(lanes.kernel_events[0], st->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(lanes.kernel, lanes.kernel_events[0], 0);
    if (e != cudaSuccess) return State::cuda_failure(e, "forking the kernel's stream");
    auto kernel_chunks = st->enqueue_blocks(slot, src, src_ids, dst, dst_ids, lanes.kernel);
    e = cudaEventRecord(lanes.kernel_events[1], lanes.kernel);
    Status rest_started;
    if (kernel_chunks) rest_started = st->enqueue_rest(rest, chunks);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(st->stream, lanes.kernel_events[1], 0);
    if (!kernel_chunks) return kernel_chunks.error();
    if (!rest_started) return rest_started.error();
    if (e != cudaSuccess) return State::cuda_failure(e, "joining the kernel's stream");
    return *kernel_chunks + chunks.size();
  });
}

// The copy engines' (Split) or the gather stage's (Gather) part of a request beside the
// kernel, on the request's stream. Called with mu held.
Status CudaCopier::State::enqueue_rest(CudaHostEngine rest, std::span<const Chunk> chunks) {
  if (rest == CudaHostEngine::Gather) {
    auto stage = gather_stage();
    if (!stage) return stage.error();
    return (*stage)->enqueue(chunks, *pool, stream);
  }
  if (cudaError_t e = enqueue_batch(chunks, copies, stream, &lanes); e != cudaSuccess) {
    return cuda_failure(
        e, "cudaMemcpyBatchAsync of " + std::to_string(chunks.size()) + " block chunks");
  }
  return {};
}

size_t CudaCopier::kernel_blocks(CudaHostEngine engine, bool to_device, size_t chunk_bytes,
                                 size_t blocks) const {
  const size_t cls = host_engine_class(chunk_bytes);
  if (engine == CudaHostEngine::Gather) {
    const double forced = state_->tuning.gather_kernel_share;
    const double share = forced > 0 ? forced : state_->gather_share[cls];
    if (!to_device || share <= 0 || blocks < 2) return 0;
    const auto k = static_cast<size_t>(static_cast<double>(blocks) * share);
    return std::clamp<size_t>(k, 1, blocks - 1);
  }
  if (engine != CudaHostEngine::Split) return 0;
  if (blocks < 2) return blocks;
  const double share = state_->kernel_share[to_device ? 0 : 1][cls];
  const auto k = static_cast<size_t>(static_cast<double>(blocks) * (share > 0 ? share : 0.5));
  return std::clamp<size_t>(k, 1, blocks - 1);
}

// Times the engines for each direction and class over one pair of probe buffers, and keeps
// the fastest; the kernel where anything fails (it needs nothing the driver may lack).
void CudaCopier::State::probe_engines() {
  for (auto& dir : engines) dir.fill(CudaHostEngine::Kernel);
  // As large as a request that loads many blocks: the copy engines' setup per chunk, and
  // the CPU's work of queueing them, weigh on a small copy more than on such a request.
  constexpr size_t kProbeBytes = 128 << 20;
  DeviceGuard guard(ordinal);
  void* pinned = nullptr;
  void* device = nullptr;
  cudaError_t e = cudaHostAlloc(&pinned, kProbeBytes, cudaHostAllocMapped);
  if (e == cudaSuccess) e = cudaMalloc(&device, kProbeBytes);
  if (e == cudaSuccess) e = cudaMemset(device, 0x5a, kProbeBytes);
  std::string choices;
  GatherProbe gathering;
  if (e == cudaSuccess) {
    std::lock_guard lock(mu);
    if (auto g = gather_stage(); g) {
      gathering = {*g, pool};
    } else {
      log(LogLevel::Warn,
          "GPU " + std::to_string(ordinal) + ": no gather stage to probe: " + g.error().message);
    }
  }
  for (int dir = 0; dir < 2 && e == cudaSuccess; ++dir) {
    for (size_t cls = 0; cls < kHostEngineClasses; ++cls) {
      std::unique_lock lock(mu, std::defer_lock);  // the gather stage is used under mu
      if (gathering.stage != nullptr) lock.lock();
      auto rates =
          probe_host_engines(dir == 0, host_engine_class_bytes(cls), pinned, device, kProbeBytes,
                             launch(), tuning.max_piece, stream, &lanes, gathering);
      if (!rates) {
        log(LogLevel::Warn, "GPU " + std::to_string(ordinal) +
                                ": probing the host copy engines: " + rates.error().message);
        e = cudaErrorUnknown;
        break;
      }
      double share = 0;
      engines[dir][cls] = choose(*rates, &share);
      kernel_share[dir][cls] = rates->kernel_share;
      if (dir == 0) gather_share[cls] = share;
      choices += std::string(dir == 0 ? "; h2d " : "; d2h ") +
                 std::to_string(host_engine_class_bytes(cls) >> 10) +
                 "K: " + describe(*rates, engines[dir][cls], share);
    }
  }
  if (device != nullptr) cudaFree(device);
  if (pinned != nullptr) cudaFreeHost(pinned);
  cudaGetLastError();
  // The gather's staging stays only where it was chosen.
  bool gathers = false;
  for (CudaHostEngine chosen : engines[0]) gathers = gathers || chosen == CudaHostEngine::Gather;
  if (!gathers) {
    std::lock_guard lock(mu);
    gather.reset();
  }
  if (e == cudaSuccess)
    log(LogLevel::Debug, "GPU " + std::to_string(ordinal) + " host engines: " + choices.substr(2));
}

Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_gather(std::span<const Chunk> chunks,
                                                                  uint64_t bytes) {
  State* st = state_.get();
  return submit_in_slot(st, bytes, [&](State::Slot&) -> Result<size_t> {
    auto stage = st->gather_stage();
    if (!stage) return stage.error();
    KVBM_TRY((*stage)->enqueue(chunks, *st->pool, st->stream));
    return chunks.size();
  });
}

CudaHostEngine CudaCopier::host_engine(bool to_device, size_t chunk_bytes) {
  State& st = *state_;
  if (!st.batch_supported.load(std::memory_order_relaxed)) return CudaHostEngine::Kernel;
  if (st.options.cuda_host_engine != CudaHostEngine::Auto) return st.options.cuda_host_engine;
  std::call_once(st.probed, [&] { st.probe_engines(); });
  return st.engines[to_device ? 0 : 1][host_engine_class(chunk_bytes)];
}

Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_batch(std::span<const Chunk> chunks,
                                                                 uint64_t bytes) {
  State* st = state_.get();
  return submit_in_slot(st, bytes, [&](State::Slot&) -> Result<size_t> {
    cudaError_t e = enqueue_batch(chunks, st->copies, st->stream, &st->lanes);
    if (batch_unsupported(e)) {
      // Not on this driver: the kernel from now on; this request a copy call each.
      cudaGetLastError();
      st->batch_supported = false;
      log(LogLevel::Info, "GPU " + std::to_string(st->ordinal) +
                              ": cudaMemcpyBatchAsync unsupported; block copies use the kernel");
      e = memcpy_each(st->copies, 0, chunks.size(), st->stream, nullptr);
    }
    if (e != cudaSuccess) {
      return State::cuda_failure(
          e, "cudaMemcpyBatchAsync of " + std::to_string(chunks.size()) + " block chunks");
    }
    return chunks.size();
  });
}

int CudaCopier::ordinal() const {
  return state_->ordinal;
}
bool CudaCopier::pageable_access() const {
  return state_->pageable;
}

#else  // !KVBM_HAVE_CUDA

struct CudaCopier::State {};

Result<std::unique_ptr<CudaCopier>> CudaCopier::create(int, const TransferEngineOptions&,
                                                       HostPool&) {
  return cuda_device_count().error();
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_gather(std::span<const Chunk>,
                                                                  uint64_t) {
  return cuda_device_count().error();
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit(std::span<const Chunk>, uint64_t) {
  return cuda_device_count().error();
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_blocks(
    const Layout&, std::span<const size_t>, const Layout&, std::span<const size_t>, uint64_t) {
  return cuda_device_count().error();
}
CudaHostEngine CudaCopier::host_engine(bool, size_t) {
  return CudaHostEngine::Kernel;
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_batch(std::span<const Chunk>, uint64_t) {
  return cuda_device_count().error();
}
size_t CudaCopier::kernel_blocks(CudaHostEngine, bool, size_t, size_t) const {
  return 0;
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit_split(
    const Layout&, std::span<const size_t>, const Layout&, std::span<const size_t>,
    std::span<const Chunk>, uint64_t, CudaHostEngine) {
  return cuda_device_count().error();
}
int CudaCopier::ordinal() const {
  return 0;
}
bool CudaCopier::pageable_access() const {
  return false;
}

#endif

CudaCopier::CudaCopier(std::unique_ptr<State> state) : state_(std::move(state)) {}
CudaCopier::~CudaCopier() = default;

}  // namespace kvbm::detail
