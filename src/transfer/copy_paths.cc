// The transfer engine's paths: which tier pairs each serves, and how it starts a copy.
#include "transfer/copy_paths.h"

#include <algorithm>
#include <optional>

#include "copy/stream_copy.h"
#include "kvbm/xfer/mem_type.h"
#include "transfer/chunk_plan.h"
#include "transfer/completion.h"

namespace kvbm::detail {

bool is_host(StorageKind k) {
  return k == StorageKind::System || k == StorageKind::Pinned;
}

namespace {

// Host requests of at least this many chunks go to the pool as blocks, each part working
// out its own chunks: listing them all first on one thread kept the others waiting
// (figures: BENCHMARKS.md, "Figures behind the code").
constexpr size_t kHostBlockJobChunks = 4096;

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
  HostTransfer(std::shared_ptr<HostJob> job, uint64_t bytes, std::optional<size_t> chunks)
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
  std::shared_ptr<HostJob> job_;
  bool counted_;
};

// A job run by a worker thread (File, Staged).
class JobTransfer final : public Transfer::Impl {
 public:
  JobTransfer(TransferPath path, std::shared_ptr<Completion> job, uint64_t bytes, size_t chunks)
      : Impl(path, bytes, chunks), job_(std::move(job)) {}
  ~JobTransfer() override { (void)job_->wait_for(std::chrono::hours(24 * 365)); }
  bool ready() override { return job_->result().has_value(); }
  Status wait(std::chrono::milliseconds timeout) override {
    auto r = job_->wait_for(timeout);
    if (!r) return timeout_error(path(), timeout);
    return *r;
  }

 private:
  std::shared_ptr<Completion> job_;
};

// A File path job: its ops, kept until the worker's Done has finished it.
struct FileOpsJob : Completion {
  explicit FileOpsJob(std::vector<FileOp> o) : ops(std::move(o)) {}
  const std::vector<FileOp> ops;
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

// The chunks of the copy, coalesced; returns their bytes.
uint64_t chunks_of(const CopyArgs& a, std::vector<Chunk>& chunks) {
  const size_t per_block = a.src.config().num_layers * a.src.config().outer_dim;
  chunks.reserve(a.src_ids.size() * per_block);
  return build_chunks(a.src, a.src_ids, a.dst, a.dst_ids, chunks);
}

// A block copy on the host pool: part k copies blocks [blocks * k / parts,
// blocks * (k + 1) / parts), working out its own chunks (chunk_plan.h).
struct BlockList {
  ChunkPlan plan;
  std::vector<size_t> src_ids, dst_ids;
  size_t parts;
  bool stream;

  size_t copy(size_t part) const {
    const size_t n = src_ids.size();
    size_t copied = 0;
    plan.for_each(src_ids, dst_ids, n * part / parts, n * (part + 1) / parts, [&](const Chunk& c) {
      HostPool::copy_bytes(c.dst, c.src, c.len, stream);
      ++copied;
    });
    if (stream) stream_fence();
    return copied;
  }
};

std::shared_ptr<HostJob> submit_blocks(HostPool& pool, ChunkPlan plan, std::vector<size_t> src_ids,
                                       std::vector<size_t> dst_ids) {
  const uint64_t bytes = src_ids.size() * plan.chunks_per_block() * plan.chunk_bytes();
  const size_t parts =
      std::clamp<size_t>(pool.parts_for(bytes), 1, std::max<size_t>(src_ids.size(), 1));
  auto list =
      std::make_shared<BlockList>(BlockList{std::move(plan), std::move(src_ids), std::move(dst_ids),
                                            parts, bytes >= HostPool::kStreamJobBytes});
  return pool.submit_parts(parts, [list](size_t part) { return list->copy(part); });
}

// Host memory on both sides: the pool's threads.
Result<Transfer> start_host(EngineState& state, const CopyArgs& a) {
  const size_t per_block = a.src.config().num_layers * a.src.config().outer_dim;
  if (a.src_ids.size() * per_block >= kHostBlockJobChunks) {
    // Many chunks: the pool's threads work out their own (chunk_plan.h).
    ChunkPlan plan(a.src, a.dst);
    const uint64_t bytes = a.src_ids.size() * per_block * plan.chunk_bytes();
    auto job = submit_blocks(state.pool, std::move(plan),
                             std::vector<size_t>(a.src_ids.begin(), a.src_ids.end()),
                             std::vector<size_t>(a.dst_ids.begin(), a.dst_ids.end()));
    return Transfer(std::make_unique<HostTransfer>(std::move(job), bytes, std::nullopt));
  }
  std::vector<Chunk> chunks;
  const uint64_t bytes = chunks_of(a, chunks);
  const size_t n = chunks.size();
  auto job = state.pool.submit(std::move(chunks), bytes);
  return Transfer(std::make_unique<HostTransfer>(std::move(job), bytes, n));
}

// GPU <-> GPU memory of one device, and GPU <-> host: one kernel for scattered blocks, a
// batch of copies, both, or a CPU gather with one DMA where the engine measured faster, or
// (pageable memory the GPU cannot address) a cudaMemcpyAsync per chunk.
Result<Transfer> start_cuda(EngineState& state, const CopyArgs& a) {
  const StorageType s = a.src.storage_type();
  const StorageType d = a.dst.storage_type();
  const int ordinal = static_cast<int>(s.kind == StorageKind::Device ? s.id : d.id);
  auto copier = state.cuda_for(ordinal);
  if (!copier) return copier.error();
  // Pageable memory is read by the kernel only where the GPU can address it; otherwise
  // one cudaMemcpyAsync per (coalesced) chunk.
  const bool pageable = s.kind == StorageKind::System || d.kind == StorageKind::System;
  if (!pageable || (*copier)->pageable_access()) {
    const LayoutConfig& c = a.src.config();
    const uint64_t bytes = a.src_ids.size() * c.num_layers * c.outer_dim * c.chunk_bytes();
    const bool host_side = s.kind != d.kind;  // pinned <-> GPU: the engine measured faster
    const bool to_device = d.kind == StorageKind::Device;
    const size_t chunk_bytes = coalesced_chunk_bytes(a.src, a.dst);
    CudaHostEngine engine = !pageable && host_side ? (*copier)->host_engine(to_device, chunk_bytes)
                                                   : CudaHostEngine::Kernel;
    if (engine == CudaHostEngine::Gather && !to_device) engine = CudaHostEngine::Kernel;
    if (engine != CudaHostEngine::Kernel) {
      // The kernel's share of the blocks first (Split; Gather where it runs beside), the
      // copy engines' or the gather's chunks the rest.
      const size_t k = (*copier)->kernel_blocks(engine, to_device, chunk_bytes, a.src_ids.size());
      std::vector<Chunk> chunks;
      chunks.reserve((a.src_ids.size() - k) * c.num_layers * c.outer_dim);
      build_chunks(a.src, a.src_ids.subspan(k), a.dst, a.dst_ids.subspan(k), chunks);
      auto impl = k > 0 ? (*copier)->submit_split(a.src, a.src_ids.first(k), a.dst,
                                                  a.dst_ids.first(k), chunks, bytes, engine)
                  : engine == CudaHostEngine::Gather ? (*copier)->submit_gather(chunks, bytes)
                                                     : (*copier)->submit_batch(chunks, bytes);
      if (!impl) return impl.error();
      return Transfer(std::move(*impl));
    }
    auto impl = (*copier)->submit_blocks(a.src, a.src_ids, a.dst, a.dst_ids, bytes);
    if (!impl) return impl.error();
    return Transfer(std::move(*impl));
  }
  // Only pageable memory the GPU cannot address comes here.
  std::vector<Chunk> chunks;
  const uint64_t bytes = chunks_of(a, chunks);
  auto impl = (*copier)->submit(chunks, bytes);
  if (!impl) return impl.error();
  return Transfer(std::move(*impl));
}

// Disk <-> host memory: io_uring, the host side fixed where registered.
Result<Transfer> start_file(EngineState& state, const CopyArgs& a) {
  std::vector<Chunk> chunks;
  const uint64_t bytes = chunks_of(a, chunks);
  const size_t n = chunks.size();
  auto worker = state.file_worker();
  if (!worker) return worker.error();
  const bool read = a.src.storage_type().kind == StorageKind::Disk;
  std::vector<FileOp> ops;
  ops.reserve(n);
  for (const Chunk& c : chunks) {  // UringBatch cuts long ones into parts in flight
    if (read) {
      ops.push_back({FileOp::Kind::Read, static_cast<int>(a.src.region(c.src_region).type().id),
                     c.src, reinterpret_cast<void*>(c.dst), c.len});
    } else {
      ops.push_back({FileOp::Kind::Write, static_cast<int>(a.dst.region(c.dst_region).type().id),
                     c.dst, reinterpret_cast<void*>(c.src), c.len});
    }
  }
  auto job = std::make_shared<FileOpsJob>(std::move(ops));
  (*worker)->submit(job->ops, [job](Status st) { job->finish(std::move(st)); });
  return Transfer(std::make_unique<JobTransfer>(TransferPath::File, std::move(job), bytes, n));
}

// Disk <-> disk or GPU memory: through the staged copier's bounce buffers.
Result<Transfer> start_staged(EngineState& state, const CopyArgs& a) {
  std::vector<Chunk> chunks;
  const uint64_t bytes = chunks_of(a, chunks);
  const size_t n = chunks.size();
  StagedRequest req;
  const StorageType s = a.src.storage_type();
  const StorageType d = a.dst.storage_type();
  if (s.kind == StorageKind::Device || d.kind == StorageKind::Device) {
    auto copier = state.cuda_for(static_cast<int>(s.kind == StorageKind::Device ? s.id : d.id));
    if (!copier) return copier.error();
    req.cuda = *copier;
  }
  auto fds = [](const Layout& l, std::vector<int>& out) {
    if (l.storage_type().kind != StorageKind::Disk) return;
    for (size_t i = 0; i < l.num_regions(); ++i) {
      out.push_back(static_cast<int>(l.region(i).type().id));
    }
  };
  fds(a.src, req.src_fds);
  fds(a.dst, req.dst_fds);
  auto copier = state.staged_copier();
  if (!copier) return copier.error();
  req.chunks = std::move(chunks);
  auto job = (*copier)->submit(std::move(req));
  return Transfer(std::make_unique<JobTransfer>(TransferPath::Staged, std::move(job), bytes, n));
}

// One side a peer's layout: one agent request for every chunk.
Result<Transfer> start_remote(EngineState&, const CopyArgs& a) {
  if (a.options.agent == nullptr) {
    return err(ErrorCode::InvalidArgument, "copy to or from the remote layout of agent '",
               a.src.is_remote() ? a.src.remote_agent() : a.dst.remote_agent(), "' needs an agent");
  }
  std::vector<Chunk> chunks;
  const uint64_t bytes = chunks_of(a, chunks);
  const size_t n = chunks.size();
  const bool write = a.dst.is_remote();
  const Layout& local = write ? a.src : a.dst;
  const Layout& remote = write ? a.dst : a.src;
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
  auto req = a.options.agent->create_request(write ? xfer::Op::Write : xfer::Op::Read, l, r,
                                             remote.remote_agent(), a.options.notification);
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return Transfer(std::make_unique<RemoteTransfer>(std::move(*req), bytes, n));
}

bool dev(const StorageType& t) {
  return t.kind == StorageKind::Device;
}
bool disk(const StorageType& t) {
  return t.kind == StorageKind::Disk;
}

}  // namespace

// In order: the first whose tiers match serves the copy.
const std::vector<CopyPath>& copy_paths() {
  static const std::vector<CopyPath> paths = {
      {TransferPath::Host,
       [](const StorageType& s, const StorageType& d) {
         return is_host(s.kind) && is_host(d.kind);
       },
       start_host},
      {TransferPath::Cuda,
       [](const StorageType& s, const StorageType& d) {
         return (dev(s) && dev(d) && s.id == d.id) || (dev(s) && is_host(d.kind)) ||
                (dev(d) && is_host(s.kind));
       },
       start_cuda},
      {TransferPath::File,
       [](const StorageType& s, const StorageType& d) {
         return (disk(s) && is_host(d.kind)) || (disk(d) && is_host(s.kind));
       },
       start_file},
      {TransferPath::Staged,
       [](const StorageType& s, const StorageType& d) {
         return (disk(s) && (disk(d) || dev(d))) || (disk(d) && dev(s));
       },
       start_staged},
  };
  return paths;
}

const CopyPath& remote_copy_path() {
  static const CopyPath path{TransferPath::Remote, nullptr, start_remote};
  return path;
}

}  // namespace kvbm::detail
