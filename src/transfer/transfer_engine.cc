// The transfer engine: validates a request, builds its chunk list (or, for a large host
// request, a plan that the host pool's parts work from), and hands it to a path.
#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>

#include "common/uring_worker.h"
#include "kvbm/transfer.h"
#include "kvbm/xfer/mem_type.h"
#include "transfer/completion.h"
#include "transfer/cuda_copier.h"
#include "transfer/host_pool.h"
#include "transfer/staged_copier.h"
#include "transfer/transfer_impl.h"

namespace kvbm {
namespace {

// Host requests of at least this many chunks go to the pool as blocks, each part working
// out its own chunks: listing 1 GiB of 16 KiB chunks first took one thread 0.8-2.5 ms of a
// 19 ms copy on the H100 machines, while 16 waited.
constexpr size_t kHostBlockJobChunks = 4096;

bool is_host(StorageKind k) {
  return k == StorageKind::System || k == StorageKind::Pinned;
}

// The size of the chunks a copy between two layouts coalesces into, before runs of
// consecutive block ids merge further: whole blocks where both are fully contiguous
// without padding, else one (block, layer, outer) chunk.
size_t coalesced_chunk_bytes(const Layout& src, const Layout& dst) {
  const LayoutConfig& c = src.config();
  const size_t block = c.num_layers * c.outer_dim * c.chunk_bytes();
  const bool whole = src.kind() == LayoutKind::FullyContiguous &&
                     dst.kind() == LayoutKind::FullyContiguous && src.strides().block == block &&
                     dst.strides().block == block;
  return whole ? block : c.chunk_bytes();
}

Error timeout_error(TransferPath path, std::chrono::milliseconds timeout) {
  return err(ErrorCode::Timeout, to_string(path), " block copy not finished after ",
             timeout.count(), " ms");
}

class HostTransfer final : public Transfer::Impl {
 public:
  // `chunks`: the request's coalesced chunks, where known up front; else (a block job,
  // whose parts list their own) what the parts copied, known once done.
  HostTransfer(std::shared_ptr<detail::HostJob> job, uint64_t bytes, std::optional<size_t> chunks)
      : Impl(TransferPath::Host, bytes, chunks.value_or(0)),
        job_(std::move(job)),
        counted_(!chunks) {}
  ~HostTransfer() override { job_->wait_for(std::chrono::hours(24 * 365)); }
  bool ready() override { return job_->done(); }
  size_t chunks() const override { return counted_ ? job_->chunks() : Impl::chunks(); }
  Status wait(std::chrono::milliseconds timeout) override {
    if (!job_->wait_for(timeout)) return timeout_error(path(), timeout);
    return {};
  }

 private:
  std::shared_ptr<detail::HostJob> job_;
  bool counted_;
};

// A job run by a worker thread (File, Staged).
class JobTransfer final : public Transfer::Impl {
 public:
  JobTransfer(TransferPath path, std::shared_ptr<detail::Completion> job, uint64_t bytes,
              size_t chunks)
      : Impl(path, bytes, chunks), job_(std::move(job)) {}
  ~JobTransfer() override { (void)job_->wait_for(std::chrono::hours(24 * 365)); }
  bool ready() override { return job_->result().has_value(); }
  Status wait(std::chrono::milliseconds timeout) override {
    auto r = job_->wait_for(timeout);
    if (!r) return timeout_error(path(), timeout);
    return *r;
  }

 private:
  std::shared_ptr<detail::Completion> job_;
};

// A File path job: its ops, kept until the worker's Done has finished it.
struct FileJob : detail::Completion {
  explicit FileJob(std::vector<detail::FileOp> o) : ops(std::move(o)) {}
  const std::vector<detail::FileOp> ops;
};

class RemoteTransfer final : public Transfer::Impl {
 public:
  RemoteTransfer(std::unique_ptr<xfer::Request> req, uint64_t bytes, size_t chunks)
      : Impl(TransferPath::Remote, bytes, chunks), req_(std::move(req)) {}
  bool ready() override {
    auto s = req_->state();
    return s == xfer::XferState::Done || s == xfer::XferState::Error;
  }
  Status wait(std::chrono::milliseconds timeout) override { return req_->wait(timeout); }

 private:
  std::unique_ptr<xfer::Request> req_;  // destroying it cancels a transfer in flight
};

}  // namespace

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
  }
  return "?";
}

const char* to_string(CudaCopyKernel kernel) {
  switch (kernel) {
    case CudaCopyKernel::Baseline:
      return "baseline";
    case CudaCopyKernel::Cta:
      return "cta";
    case CudaCopyKernel::Warp:
      return "warp";
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

struct TransferEngine::State {
  TransferEngineOptions options;
  detail::HostPool pool;
  std::mutex mu;  // guards the lazily created paths below
  std::vector<std::unique_ptr<detail::CudaCopier>> cuda;
  std::shared_ptr<detail::UringWorker> files;    // shared: registrations hold it weakly
  std::unique_ptr<detail::StagedCopier> staged;  // destroyed first: it uses `cuda`

  explicit State(const TransferEngineOptions& o) : options(o), pool(o.host_threads) {}

  Result<detail::CudaCopier*> cuda_for(int ordinal) {
    std::lock_guard lock(mu);
    for (auto& c : cuda) {
      if (c->ordinal() == ordinal) return c.get();
    }
    auto c = detail::CudaCopier::create(ordinal, options);
    if (!c) return c.error();
    cuda.push_back(std::move(*c));
    return cuda.back().get();
  }

  Result<std::shared_ptr<detail::UringWorker>> file_worker() {
    std::lock_guard lock(mu);
    if (!files) {
      auto w = detail::UringWorker::create(options.uring_queue_depth);
      if (!w) return w.error();
      files = std::move(*w);
    }
    return files;
  }

  Result<detail::StagedCopier*> staged_copier() {
    std::lock_guard lock(mu);
    if (!staged) {
      auto c = detail::StagedCopier::create(options.staging_bytes, options.uring_queue_depth);
      if (!c) return c.error();
      staged = std::move(*c);
    }
    return staged.get();
  }
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
  if (options.cuda_ctas_per_sm == 0 || options.cuda_threads == 0 || options.cuda_threads > 1024 ||
      options.cuda_max_piece == 0) {
    return err(ErrorCode::InvalidArgument, "CUDA launch shape: ctas_per_sm ",
               options.cuda_ctas_per_sm, ", threads ", options.cuda_threads, ", max piece ",
               options.cuda_max_piece, " (need > 0 and threads <= 1024)");
  }
  if (options.cuda_kernel > CudaCopyKernel::Warp) {
    return err(ErrorCode::InvalidArgument, "cuda_kernel ",
               static_cast<unsigned>(options.cuda_kernel), " is not a kernel (0..2)");
  }
  if (options.cuda_host_engine > CudaHostEngine::Split) {
    return err(ErrorCode::InvalidArgument, "cuda_host_engine ",
               static_cast<unsigned>(options.cuda_host_engine), " is not an engine (0..3)");
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
  if (layout.is_remote() || !is_host(kind)) {
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

Result<TransferPath> TransferEngine::path_for(const Layout& src, const Layout& dst) const {
  if (src.is_remote() && dst.is_remote()) {
    return err(ErrorCode::InvalidArgument, "both layouts are remote (agents '", src.remote_agent(),
               "' and '", dst.remote_agent(), "'); one must be local");
  }
  if (src.is_remote() || dst.is_remote()) return TransferPath::Remote;
  const StorageType s = src.storage_type();
  const StorageType d = dst.storage_type();
  if (is_host(s.kind) && is_host(d.kind)) return TransferPath::Host;
  const bool s_dev = s.kind == StorageKind::Device;
  const bool d_dev = d.kind == StorageKind::Device;
  if ((s_dev && d_dev && s.id == d.id) || (s_dev && is_host(d.kind)) ||
      (d_dev && is_host(s.kind))) {
    return TransferPath::Cuda;
  }
  if ((s.kind == StorageKind::Disk && is_host(d.kind)) ||
      (d.kind == StorageKind::Disk && is_host(s.kind))) {
    return TransferPath::File;
  }
  const bool s_disk = s.kind == StorageKind::Disk;
  const bool d_disk = d.kind == StorageKind::Disk;
  if ((s_disk && (d_disk || d_dev)) || (d_disk && s_dev)) return TransferPath::Staged;
  return err(ErrorCode::Unsupported, "no block copy path from ", s.to_string(), " to ",
             d.to_string(),
             s_dev && d_dev ? " (different GPUs)" : "; stage the blocks through a host layout");
}

Result<Transfer> TransferEngine::copy(const Layout& src, std::span<const size_t> src_ids,
                                      const Layout& dst, std::span<const size_t> dst_ids,
                                      const CopyOptions& options) {
  auto path = path_for(src, dst);
  if (!path) return path.error();
  KVBM_TRY(detail::validate_copy(src, src_ids, dst, dst_ids));
  if (*path == TransferPath::Remote && options.agent == nullptr) {
    return err(ErrorCode::InvalidArgument, "copy to or from the remote layout of agent '",
               src.is_remote() ? src.remote_agent() : dst.remote_agent(), "' needs an agent");
  }
  if (*path == TransferPath::Cuda) {
    const StorageType s = src.storage_type();
    const StorageType d = dst.storage_type();
    const int ordinal = static_cast<int>(s.kind == StorageKind::Device ? s.id : d.id);
    auto copier = state_->cuda_for(ordinal);
    if (!copier) return copier.error();
    // Pageable memory is read by the kernel only where the GPU can address it; otherwise
    // one cudaMemcpyAsync per (coalesced) chunk.
    const bool pageable = s.kind == StorageKind::System || d.kind == StorageKind::System;
    if (!pageable || (*copier)->pageable_access()) {
      const LayoutConfig& c = src.config();
      const uint64_t bytes = src_ids.size() * c.num_layers * c.outer_dim * c.chunk_bytes();
      const bool host_side = s.kind != d.kind;  // pinned <-> GPU: the engine measured faster
      const CudaHostEngine engine = !pageable && host_side
                                        ? (*copier)->host_engine(d.kind == StorageKind::Device,
                                                                 coalesced_chunk_bytes(src, dst))
                                        : CudaHostEngine::Kernel;
      if (engine == CudaHostEngine::Batch || engine == CudaHostEngine::Split) {
        // Split: the kernel's share of the blocks first, the copy engines' chunks the rest.
        const size_t k =
            engine == CudaHostEngine::Split
                ? (*copier)->kernel_blocks(d.kind == StorageKind::Device,
                                           coalesced_chunk_bytes(src, dst), src_ids.size())
                : 0;
        std::vector<Chunk> chunks;
        chunks.reserve((src_ids.size() - k) * c.num_layers * c.outer_dim);
        detail::build_chunks(src, src_ids.subspan(k), dst, dst_ids.subspan(k), chunks);
        auto impl = k == 0 ? (*copier)->submit_batch(chunks, bytes)
                           : (*copier)->submit_split(src, src_ids.first(k), dst, dst_ids.first(k),
                                                     chunks, bytes);
        if (!impl) return impl.error();
        return Transfer(std::move(*impl));
      }
      auto impl = (*copier)->submit_blocks(src, src_ids, dst, dst_ids, bytes);
      if (!impl) return impl.error();
      return Transfer(std::move(*impl));
    }
  }
  const size_t per_block = src.config().num_layers * src.config().outer_dim;
  if (*path == TransferPath::Host && src_ids.size() * per_block >= kHostBlockJobChunks) {
    // Many chunks: the pool's threads work out their own (chunk_plan.h).
    detail::ChunkPlan plan(src, dst);
    const uint64_t bytes = src_ids.size() * per_block * plan.chunk_bytes();
    auto job = state_->pool.submit_blocks(std::move(plan),
                                          std::vector<size_t>(src_ids.begin(), src_ids.end()),
                                          std::vector<size_t>(dst_ids.begin(), dst_ids.end()));
    return Transfer(std::make_unique<HostTransfer>(std::move(job), bytes, std::nullopt));
  }
  std::vector<Chunk> chunks;
  chunks.reserve(src_ids.size() * per_block);
  const uint64_t bytes = detail::build_chunks(src, src_ids, dst, dst_ids, chunks);
  const size_t n = chunks.size();

  switch (*path) {
    case TransferPath::Host: {
      auto job = state_->pool.submit(std::move(chunks), bytes);
      return Transfer(std::make_unique<HostTransfer>(std::move(job), bytes, n));
    }
    case TransferPath::Cuda: {
      const StorageType s = src.storage_type();
      const StorageType d = dst.storage_type();
      const int ordinal = static_cast<int>(s.kind == StorageKind::Device ? s.id : d.id);
      auto copier = state_->cuda_for(ordinal);
      if (!copier) return copier.error();
      // Only pageable memory the GPU cannot address comes here (see above).
      auto impl = (*copier)->submit(chunks, bytes);
      if (!impl) return impl.error();
      return Transfer(std::move(*impl));
    }
    case TransferPath::File: {
      auto worker = state_->file_worker();
      if (!worker) return worker.error();
      const bool read = src.storage_type().kind == StorageKind::Disk;
      std::vector<detail::FileOp> ops;
      ops.reserve(n);
      for (const Chunk& c : chunks) {  // UringBatch cuts long ones into parts in flight
        if (read) {
          ops.push_back({detail::FileOp::Kind::Read,
                         static_cast<int>(src.region(c.src_region).type().id), c.src,
                         reinterpret_cast<void*>(c.dst), c.len});
        } else {
          ops.push_back({detail::FileOp::Kind::Write,
                         static_cast<int>(dst.region(c.dst_region).type().id), c.dst,
                         reinterpret_cast<void*>(c.src), c.len});
        }
      }
      auto job = std::make_shared<FileJob>(std::move(ops));
      (*worker)->submit(job->ops, [job](Status st) { job->finish(std::move(st)); });
      return Transfer(std::make_unique<JobTransfer>(*path, std::move(job), bytes, n));
    }
    case TransferPath::Staged: {
      detail::StagedRequest req;
      const StorageType s = src.storage_type();
      const StorageType d = dst.storage_type();
      if (s.kind == StorageKind::Device || d.kind == StorageKind::Device) {
        auto copier =
            state_->cuda_for(static_cast<int>(s.kind == StorageKind::Device ? s.id : d.id));
        if (!copier) return copier.error();
        req.cuda = *copier;
      }
      auto fds = [](const Layout& l, std::vector<int>& out) {
        if (l.storage_type().kind != StorageKind::Disk) return;
        for (size_t i = 0; i < l.num_regions(); ++i) {
          out.push_back(static_cast<int>(l.region(i).type().id));
        }
      };
      fds(src, req.src_fds);
      fds(dst, req.dst_fds);
      auto copier = state_->staged_copier();
      if (!copier) return copier.error();
      req.chunks = std::move(chunks);
      auto job = (*copier)->submit(std::move(req));
      return Transfer(std::make_unique<JobTransfer>(*path, std::move(job), bytes, n));
    }
    case TransferPath::Remote: {
      const bool write = dst.is_remote();
      const Layout& local = write ? src : dst;
      const Layout& remote = write ? dst : src;
      const xfer::MemType local_type = xfer::mem_type_of(local.storage_type());
      xfer::DescList l(local_type);
      xfer::DescList r(remote.remote_regions().front().storage().mem_type());
      l.descs.reserve(n);
      r.descs.reserve(n);
      for (const Chunk& c : chunks) {
        const uint32_t lr = write ? c.src_region : c.dst_region;
        const uint32_t rr = write ? c.dst_region : c.src_region;
        const uint64_t ldev = local_type == xfer::MemType::Dram ? 0 : local.region(lr).type().id;
        l.descs.push_back({write ? c.src : c.dst, c.len, ldev});
        r.descs.push_back(
            {write ? c.dst : c.src, c.len, remote.remote_regions()[rr].storage().device_id()});
      }
      auto req = options.agent->create_request(write ? xfer::Op::Write : xfer::Op::Read, l, r,
                                               remote.remote_agent(), options.notification);
      if (!req) return req.error();
      KVBM_TRY((*req)->post());
      return Transfer(std::make_unique<RemoteTransfer>(std::move(*req), bytes, n));
    }
  }
  return err(ErrorCode::Internal, "unknown transfer path");
}

}  // namespace kvbm
