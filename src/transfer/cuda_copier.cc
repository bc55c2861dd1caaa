#include "transfer/cuda_copier.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <thread>

#include "common/cuda_util.h"
#include "kvbm/log.h"
#include "transfer/copy_kernel.h"

namespace kvbm::detail {

#if KVBM_HAVE_CUDA

namespace {
constexpr size_t kSlots = 4;
}

struct CudaCopier::State {
  struct Slot {
    CopyEntry* host = nullptr;  // pinned: filled by the CPU
    CopyEntry* dev = nullptr;   // uploaded copy the kernel reads
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
    uint64_t generation = 0;
  };

  int ordinal = 0;
  TransferEngineOptions options;
  bool pageable = false;
  unsigned sms = 1;
  cudaStream_t stream = nullptr;
  std::mutex mu;
  std::array<Slot, kSlots> slots;
  size_t next = 0;

  ~State() {
    DeviceGuard guard(ordinal);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (Slot& s : slots) {
      if (s.host != nullptr) cudaFreeHost(s.host);
      if (s.dev != nullptr) cudaFree(s.dev);
      if (s.done != nullptr) cudaEventDestroy(s.done);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
    cudaGetLastError();
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

}  // namespace

Result<std::unique_ptr<CudaCopier>> CudaCopier::create(int ordinal,
                                                       const TransferEngineOptions& options) {
  KVBM_TRY(check_device(ordinal));
  DeviceGuard guard(ordinal);
  auto st = std::make_unique<State>();
  st->ordinal = ordinal;
  st->options = options;
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
                                                           uint64_t bytes, bool use_kernel) {
  State& st = *state_;
  std::lock_guard lock(st.mu);
  DeviceGuard guard(st.ordinal);
  const size_t index = st.next++ % kSlots;
  State::Slot& slot = st.slots[index];
  // The slot's previous request must be done before its table is overwritten.
  cudaError_t e = cudaEventSynchronize(slot.done);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cuda_error(ErrorCode::Internal, e, "waiting for an earlier block copy");
  }
  ++slot.generation;
  auto fail = [&](cudaError_t code, const std::string& what) -> Error {
    cudaGetLastError();
    // Whatever was queued before the failure still guards the table's next reuse.
    cudaEventRecord(slot.done, st.stream);
    cudaGetLastError();
    return cuda_error(ErrorCode::Internal, code, what);
  };
  if (use_kernel) {
    const uint64_t piece = st.options.cuda_max_piece;
    size_t n = 0;
    for (const Chunk& c : chunks) n += (c.len + piece - 1) / piece;
    if (slot.capacity < n) {
      const size_t cap = std::max<size_t>({n, 2 * slot.capacity, 1024});
      if (slot.host != nullptr) cudaFreeHost(slot.host);
      if (slot.dev != nullptr) cudaFree(slot.dev);
      slot.host = nullptr;
      slot.dev = nullptr;
      slot.capacity = 0;
      if ((e = cudaHostAlloc(reinterpret_cast<void**>(&slot.host), cap * sizeof(CopyEntry),
                             cudaHostAllocDefault)) != cudaSuccess) {
        slot.host = nullptr;
        return fail(e, "cudaHostAlloc of a chunk table of " + std::to_string(cap) + " entries");
      }
      if ((e = cudaMalloc(reinterpret_cast<void**>(&slot.dev), cap * sizeof(CopyEntry))) !=
          cudaSuccess) {
        slot.dev = nullptr;
        return fail(e, "cudaMalloc of a chunk table of " + std::to_string(cap) + " entries");
      }
      slot.capacity = cap;
    }
    size_t k = 0;
    for (const Chunk& c : chunks) {
      for (uint64_t off = 0; off < c.len; off += piece) {
        slot.host[k++] = CopyEntry{c.src + off, c.dst + off, std::min(piece, c.len - off)};
      }
    }
    if ((e = cudaMemcpyAsync(slot.dev, slot.host, n * sizeof(CopyEntry), cudaMemcpyHostToDevice,
                             st.stream)) != cudaSuccess) {
      return fail(e, "uploading the chunk table");
    }
    const unsigned grid =
        static_cast<unsigned>(std::min<size_t>(n, size_t{st.sms} * st.options.cuda_ctas_per_sm));
    if ((e = launch_copy_kernel(slot.dev, n, grid, st.options.cuda_threads, st.stream)) !=
        cudaSuccess) {
      return fail(e, "launching the block copy kernel");
    }
  } else {
    for (const Chunk& c : chunks) {
      e = cudaMemcpyAsync(reinterpret_cast<void*>(c.dst), reinterpret_cast<const void*>(c.src),
                          c.len, cudaMemcpyDefault, st.stream);
      if (e != cudaSuccess) return fail(e, "cudaMemcpyAsync of a block chunk");
    }
  }
  if ((e = cudaEventRecord(slot.done, st.stream)) != cudaSuccess) {
    return fail(e, "cudaEventRecord");
  }
  return std::unique_ptr<Transfer::Impl>(
      new CudaTransfer(state_.get(), index, slot.generation, bytes, chunks.size()));
}

int CudaCopier::ordinal() const {
  return state_->ordinal;
}
bool CudaCopier::pageable_access() const {
  return state_->pageable;
}

#else  // !KVBM_HAVE_CUDA

struct CudaCopier::State {};

Result<std::unique_ptr<CudaCopier>> CudaCopier::create(int, const TransferEngineOptions&) {
  return cuda_device_count().error();
}
Result<std::unique_ptr<Transfer::Impl>> CudaCopier::submit(std::span<const Chunk>, uint64_t, bool) {
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
