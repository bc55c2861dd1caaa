// The transfer engine: validates a request and hands it to the path that serves its tier
// pair (copy_paths.h), which builds its chunk list (or, for a large host request, a plan
// that the host pool's parts work from) and starts it.
#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>

#include "common/uring_worker.h"
#include "kvbm/transfer.h"
#include "transfer/copy_paths.h"
#include "transfer/cuda_tuning.h"
#include "transfer/engine_state.h"
#include "transfer/transfer_impl.h"

namespace kvbm {

const char* to_string(TransferPath path) {
  switch (path) {
    case TransferPath::Host:
      return "host";
    case TransferPath::Cuda:
      return "cuda";
    case TransferPath::File:
      return "file";
    case TransferPath::Remote:
      return "remote";
    case TransferPath::Staged:
      return "staged";
  }
  return "?";
}

const char* to_string(CudaHostEngine engine) {
  switch (engine) {
    case CudaHostEngine::Auto:
      return "auto";
    case CudaHostEngine::Kernel:
      return "kernel";
    case CudaHostEngine::Batch:
      return "batch";
    case CudaHostEngine::Split:
      return "split";
    case CudaHostEngine::Gather:
      return "gather";
  }
  return "?";
}

Transfer::Transfer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Transfer::Transfer(Transfer&&) noexcept = default;
Transfer& Transfer::operator=(Transfer&&) noexcept = default;
Transfer::~Transfer() = default;
bool Transfer::ready() {
  return impl_->ready();
}
Status Transfer::wait(std::chrono::milliseconds timeout) {
  return impl_->wait(timeout);
}
TransferPath Transfer::path() const {
  return impl_->path();
}
uint64_t Transfer::bytes() const {
  return impl_->bytes();
}
size_t Transfer::chunks() const {
  return impl_->chunks();
}

struct TransferEngine::State : detail::EngineState {
  using EngineState::EngineState;
};

Result<std::unique_ptr<TransferEngine>> TransferEngine::create(TransferEngineOptions options) {
  if (options.host_threads > 1024) {
    return err(ErrorCode::InvalidArgument, "host_threads ", options.host_threads, " exceeds 1024");
  }
  if (options.host_threads == 0) {
    options.host_threads = std::max(1u, std::thread::hardware_concurrency());
  }
  if (options.uring_queue_depth == 0 || options.uring_queue_depth > 4096) {
    return err(ErrorCode::InvalidArgument, "uring_queue_depth ", options.uring_queue_depth,
               " must be in 1..4096");
  }
  const detail::CudaTuning& tuning = detail::cuda_tuning(options);
  if (tuning.ctas_per_sm == 0 || tuning.threads == 0 || tuning.threads > 1024 ||
      tuning.max_piece == 0) {
    return err(ErrorCode::InvalidArgument, "CUDA launch shape: ctas_per_sm ", tuning.ctas_per_sm,
               ", threads ", tuning.threads, ", max piece ", tuning.max_piece,
               " (need > 0 and threads <= 1024)");
  }
  if (tuning.kernel > CudaCopyKernel::Warp) {
    return err(ErrorCode::InvalidArgument, "cuda_kernel ", static_cast<unsigned>(tuning.kernel),
               " is not a kernel (0..2)");
  }
  if (options.cuda_host_engine > CudaHostEngine::Gather) {
    return err(ErrorCode::InvalidArgument, "cuda_host_engine ",
               static_cast<unsigned>(options.cuda_host_engine), " is not an engine (0..4)");
  }
  // Two halves, each a whole number of pages (direct I/O); at most 64 GiB.
  if (options.staging_bytes == 0 || options.staging_bytes % 8192 != 0 ||
      options.staging_bytes > (size_t{64} << 30)) {
    return err(ErrorCode::InvalidArgument, "staging_bytes ", options.staging_bytes,
               " must be a positive multiple of 8192, at most 64 GiB");
  }
  return std::unique_ptr<TransferEngine>(new TransferEngine(std::make_unique<State>(options)));
}

TransferEngine::TransferEngine(std::unique_ptr<State> state) : state_(std::move(state)) {}
TransferEngine::~TransferEngine() = default;

size_t TransferEngine::host_threads() const {
  return state_->pool.threads();
}

Result<CudaHostEngine> TransferEngine::cuda_host_engine(int ordinal, bool to_device,
                                                        size_t chunk_bytes) {
  auto copier = state_->cuda_for(ordinal);
  if (!copier) return copier.error();
  return (*copier)->host_engine(to_device, chunk_bytes);
}

namespace {

// A region's fixed buffer in the File path's ring: gone with the region, or with the ring.
class FileRegistration final : public RegistrationHandle {
 public:
  FileRegistration(std::weak_ptr<detail::UringWorker> worker, const void* base)
      : worker_(std::move(worker)), base_(base) {}
  Status release() override {
    // I/O into the region still in flight goes on as plain I/O (UringBatch::remove_fixed).
    if (auto w = worker_.lock()) w->batch().remove_fixed(base_);
    return {};
  }

 private:
  std::weak_ptr<detail::UringWorker> worker_;
  const void* base_;
};

}  // namespace

Status TransferEngine::register_host_layout(Layout& layout) {
  const StorageKind kind = layout.storage_type().kind;
  if (layout.is_remote() || !detail::is_host(kind)) {
    return err(ErrorCode::InvalidArgument, "register_host_layout takes a layout of host memory",
               " (System or Pinned), not ", layout.storage_type().to_string());
  }
  std::vector<RegisterableStorage*> regions;
  for (size_t i = 0; i < layout.num_regions(); ++i) {
    auto* r = dynamic_cast<RegisterableStorage*>(&layout.region(i));
    if (r == nullptr || r->data() == nullptr) {
      return err(ErrorCode::InvalidArgument, "region ", i, " of the layout (",
                 layout.region(i).type().to_string(), ") cannot be registered");
    }
    if (r->is_registered(kFileRegistrationKey)) {
      return err(ErrorCode::AlreadyRegistered, "region ", i, " of the layout is already under '",
                 kFileRegistrationKey, "'");
    }
    regions.push_back(r);
  }
  auto worker = state_->file_worker();
  if (!worker) return worker.error();
  for (RegisterableStorage* r : regions) {
    // Refused by the kernel (logged once by the ring): this region's copies go unfixed.
    if (!(*worker)->batch().add_fixed(r->data(), r->size())) continue;
    KVBM_TRY(r->register_handle(kFileRegistrationKey,
                                std::make_unique<FileRegistration>(*worker, r->data())));
  }
  return {};
}

uint64_t TransferEngine::file_fixed_ios() const {
  std::lock_guard lock(state_->mu);
  return state_->files ? state_->files->batch().fixed_submissions() : 0;
}

namespace {

// The path serving src -> dst, or why there is none.
Result<const detail::CopyPath*> find_path(const Layout& src, const Layout& dst) {
  if (src.is_remote() && dst.is_remote()) {
    return err(ErrorCode::InvalidArgument, "both layouts are remote (agents '", src.remote_agent(),
               "' and '", dst.remote_agent(), "'); one must be local");
  }
  if (src.is_remote() || dst.is_remote()) return &detail::remote_copy_path();
  const StorageType s = src.storage_type();
  const StorageType d = dst.storage_type();
  for (const detail::CopyPath& p : detail::copy_paths()) {
    if (p.serves(s, d)) return &p;
  }
  const bool s_dev = s.kind == StorageKind::Device;
  const bool d_dev = d.kind == StorageKind::Device;
  return err(ErrorCode::Unsupported, "no block copy path from ", s.to_string(), " to ",
             d.to_string(),
             s_dev && d_dev ? " (different GPUs)" : "; stage the blocks through a host layout");
}

}  // namespace

Result<TransferPath> TransferEngine::path_for(const Layout& src, const Layout& dst) const {
  auto path = find_path(src, dst);
  if (!path) return path.error();
  return (*path)->id;
}

Result<Transfer> TransferEngine::copy(const Layout& src, std::span<const size_t> src_ids,
                                      const Layout& dst, std::span<const size_t> dst_ids,
                                      const CopyOptions& options) {
  auto path = find_path(src, dst);
  if (!path) return path.error();
  KVBM_TRY(detail::validate_copy(src, src_ids, dst, dst_ids));
  return (*path)->start(*state_, {src, src_ids, dst, dst_ids, options});
}

}  // namespace kvbm
