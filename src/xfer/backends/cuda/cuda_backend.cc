#include "xfer/backends/cuda/cuda_backend.h"

#include "xfer/backend_params.h"
#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail {
namespace cuda {
namespace {

// enqueue()'s choice of the copy kernel, by a device's copies in a request: up to a few MiB
// on average VRAM <-> VRAM (one of them too: see launch_copy_one), several small ones with
// a host side. On the H100, 64 x 16 KiB pinned <-> VRAM: kernel 0.95 / 0.91 (h2d / d2h) of
// one large copy, batch 0.14 / 0.56; 64 x 64 KiB and 256 KiB: kernel 0.92-0.97, batch
// 0.99-1.02. A single host copy stays with the copy engine: through the kernel one 1 MiB
// h2d moved more with 4 in flight (0.92 against 0.85) but took 6 us longer alone (the
// kernel's dependent PCIe reads).
constexpr uint64_t kVramKernelMaxAvg = 4 << 20;
static_assert(kVramKernelMaxAvg <= kCopyOneMaxBytes);
constexpr uint64_t kHostKernelMaxAvg = 32 << 10;
constexpr uint64_t kHostPieceBytes = 16 << 10;
// VRAM pieces: about kVramPiecesWanted per launch, so that enough warps copy at once (64 x
// 64 KiB in 64 KiB pieces: 0.65 of the d2d ceiling; in 8 KiB pieces 0.86-0.91), within
// these bounds (smaller pieces cost table entries the host writes each post).
constexpr uint64_t kVramPiecesWanted = 2048;
constexpr uint64_t kVramPieceMin = 8 << 10;

uint64_t vram_piece_bytes(uint64_t total) {
  uint64_t piece = kVramPieceMin;
  while (piece < kCopyPieceBytes && piece * 2 * kVramPiecesWanted <= total) piece *= 2;
  return piece;
}

// Whether [addr, addr + len) is pinned host memory that a kernel can address as it is
// (mapped, at the same address on the device: cudaHostAlloc'd, or registered and the
// device can use host pointers). Pageable memory is not: the kernel path skips it.
bool host_mapped(uint64_t addr, uint64_t len) {
  for (uint64_t at : {addr, addr + len - 1}) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, reinterpret_cast<void*>(at)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (a.type != cudaMemoryTypeHost || a.devicePointer != reinterpret_cast<void*>(at)) {
      return false;
    }
  }
  return true;
}

}  // namespace

CudaLocalRegion::~CudaLocalRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  auto it = backend->locals_.find({type, desc.dev_id, desc.addr});
  if (it == backend->locals_.end()) return;
  std::erase(it->second, this);
  if (it->second.empty()) backend->locals_.erase(it);
}

CudaRemoteRegion::~CudaRemoteRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  backend->unmap_locked(*this);
  peer->regions.erase(this);
}

// ---- copies within this process, and through CUDA IPC -------------------------------

Status CudaCopyRequest::post() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (state_ == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "CUDA request is already in progress");
  }
  if (peer_->failure) {
    return fail_locked(
        err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message));
  }
  // The copies of each device used (almost always one), gathered first: each device's go
  // to its stream in one call. Vectors are kept across posts: no allocation per post.
  used_count_ = 0;
  for (auto& d : used_) {
    d.dsts.clear();
    d.srcs.clear();
    d.sizes.clear();
  }
  for (const CopyItem& it : items_) {
    uint64_t remote = it.remote;
    if (it.ipc != nullptr) {
      if (it.ipc->mapped == nullptr) {
        return fail_locked(err(ErrorCode::Remote, "the CUDA IPC mapping of agent '", peer_->name,
                               "' region ", hex(it.ipc->desc.addr), " is closed"));
      }
      remote = reinterpret_cast<uint64_t>(it.ipc->mapped) + (it.remote - it.ipc->ipc->alloc_base);
    }
    const auto end = used_.begin() + static_cast<ptrdiff_t>(used_count_);
    auto d = std::find_if(used_.begin(), end, [&](const DeviceCopies& u) {
      return u.device == it.device && u.host == it.host && u.cross_gpu == it.cross_gpu &&
             u.mapped == it.mapped;
    });
    if (d == end) {
      if (used_count_ == used_.size()) used_.emplace_back();
      d = used_.begin() + static_cast<ptrdiff_t>(used_count_++);
      d->device = it.device;
      d->host = it.host;
      d->cross_gpu = it.cross_gpu;
      d->mapped = it.mapped;
      d->stream = backend_->stream(it.device);
      if (d->stream == nullptr) {
        return fail_locked(err(ErrorCode::Internal, "no CUDA stream on device ", it.device));
      }
    }
    d->dsts.push_back(reinterpret_cast<void*>(op_ == Op::Write ? remote : it.local));
    d->srcs.push_back(reinterpret_cast<const void*>(op_ == Op::Write ? it.local : remote));
    d->sizes.push_back(it.len);
  }
  // A failure after some copies were queued waits for those, so none lands later.
  auto drain = [&](Error e) {
    for (size_t i = 0; i < used_count_; ++i) {
      DeviceGuard g(used_[i].device);
      cudaStreamSynchronize(used_[i].stream);
    }
    return fail_locked(std::move(e));
  };
  for (size_t i = 0; i < used_count_; ++i) {
    if (Status st = enqueue(used_[i]); !st) return drain(st.error());
  }
  for (size_t i = 0; i < used_count_; ++i) {
    const int dev = used_[i].device;
    const cudaStream_t s = used_[i].stream;
    DeviceGuard g(dev);
    auto ev = std::find_if(events_.begin(), events_.end(), [&](auto& p) { return p.first == dev; });
    if (ev == events_.end()) {
      cudaEvent_t e = nullptr;
      if (cudaError_t r = cudaEventCreateWithFlags(&e, cudaEventDisableTiming); r != cudaSuccess)
        return drain(cuda_fail(ErrorCode::Internal, r, "cudaEventCreate"));
      events_.emplace_back(dev, e);
      ev = events_.end() - 1;
    }
    if (cudaError_t r = cudaEventRecord(ev->second, s); r != cudaSuccess)
      return drain(cuda_fail(ErrorCode::Internal, r, "cudaEventRecord"));
  }
  state_ = XferState::InProgress;
  signalled_ = false;
  peer_->copies.insert(this);
  return {};
}

// One device's copies of a post, in one call where there are several. With a host side:
// one cudaMemcpyBatchAsync, whose copy engines overlap their setup (64 x 64 KiB pinned ->
// VRAM: 0.97 of one large copy, against 0.31 a call each, on the H100), unless the copies
// are small and the host side is mapped pinned memory: the copy engines still pay a setup
// per copy there (64 x 16 KiB: 0.14), so one launch of the copy kernel moves them over
// PCIe instead. VRAM to VRAM, a few MiB each or less: the copy kernel (copy_list.h, a
// single copy passed by value); as
// pieces of a batch they ran at 55-62 GB/s, about what a call each gives (51), where one
// large cudaMemcpyAsync moves 1.4 TB/s. Otherwise a cudaMemcpyAsync each.
Status CudaCopyRequest::enqueue(DeviceCopies& d) {
  DeviceGuard g(d.device);
  const size_t n = d.sizes.size();
  uint64_t total = 0;
  for (size_t len : d.sizes) total += len;
  const bool kernel = backend_->kernel_copies_ && !d.cross_gpu &&
                      (d.host ? n > 1 && d.mapped && total / n <= kHostKernelMaxAvg
                              : total / n <= kVramKernelMaxAvg);
  if (kernel && n == 1) {
    if (cudaError_t e = launch_copy_one(reinterpret_cast<uint64_t>(d.srcs[0]),
                                        reinterpret_cast<uint64_t>(d.dsts[0]), total, d.stream);
        e != cudaSuccess) {
      return cuda_fail(ErrorCode::Internal, e,
                       "copy kernel launch for " + std::to_string(total) + " bytes on device " +
                           std::to_string(d.device));
    }
    return {};
  }
  if (kernel) {
    // Small pieces: more warps copy at once (for host memory, more PCIe reads in flight).
    const uint64_t piece = d.host ? kHostPieceBytes : vram_piece_bytes(total);
    uint64_t count = 0;
    for (size_t len : d.sizes) count += (len + piece - 1) / piece;
    if (count <= UINT32_MAX) {
      if (count > d.piece_capacity) {
        // The previous post's launch has completed (a request is posted again only then).
        if (d.pieces != nullptr) cudaFreeHost(d.pieces);
        d.pieces = nullptr;
        d.piece_capacity = 0;
        void* p = nullptr;
        if (cudaError_t e = cudaHostAlloc(&p, count * sizeof(CopyPiece),
                                          cudaHostAllocMapped | cudaHostAllocPortable);
            e != cudaSuccess) {
          return cuda_fail(ErrorCode::AllocationFailed, e,
                           "cudaHostAlloc of a copy table of " + std::to_string(count) + " pieces");
        }
        d.pieces = static_cast<CopyPiece*>(p);
        d.piece_capacity = count;
      }
      size_t k = 0;
      for (size_t i = 0; i < n; ++i) {
        const auto src = reinterpret_cast<uint64_t>(d.srcs[i]);
        const auto dst = reinterpret_cast<uint64_t>(d.dsts[i]);
        for (uint64_t off = 0; off < d.sizes[i]; off += piece) {
          d.pieces[k++] = {src + off, dst + off, std::min<uint64_t>(piece, d.sizes[i] - off)};
        }
      }
      if (cudaError_t e = launch_copy_list(d.pieces, static_cast<uint32_t>(count), d.stream);
          e != cudaSuccess) {
        return cuda_fail(ErrorCode::Internal, e,
                         "copy kernel launch for " + std::to_string(n) + " copies on device " +
                             std::to_string(d.device));
      }
      return {};
    }
  }
  if (n > 1 && d.host && backend_->batch_copies_.load(std::memory_order_relaxed)) {
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t first = 0;
    const cudaError_t e = cudaMemcpyBatchAsync(d.dsts.data(), d.srcs.data(), d.sizes.data(), n,
                                               &attr, &first, 1, d.stream);
    if (e == cudaSuccess) return {};
    if (e != cudaErrorNotSupported && e != cudaErrorCallRequiresNewerDriver) {
      return cuda_fail(ErrorCode::Internal, e,
                       "cudaMemcpyBatchAsync of " + std::to_string(n) + " copies on device " +
                           std::to_string(d.device));
    }
    (void)cudaGetLastError();  // not sticky; clear it before going on without batches
    backend_->batch_copies_ = false;
    log(LogLevel::Info, "CUDA: cudaMemcpyBatchAsync unsupported here; one copy call each");
  }
  for (size_t i = 0; i < n; ++i) {
    if (cudaError_t e =
            cudaMemcpyAsync(d.dsts[i], d.srcs[i], d.sizes[i], cudaMemcpyDefault, d.stream);
        e != cudaSuccess) {
      return cuda_fail(ErrorCode::Internal, e,
                       "cudaMemcpyAsync of " + std::to_string(d.sizes[i]) + " bytes " +
                           hex(reinterpret_cast<uint64_t>(d.srcs[i])) + " -> " +
                           hex(reinterpret_cast<uint64_t>(d.dsts[i])) + " on device " +
                           std::to_string(d.device));
    }
  }
  return {};
}

XferState CudaCopyRequest::poll() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (state_ != XferState::InProgress) return state_;
  for (auto& [dev, ev] : events_) {
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaErrorNotReady) return state_;
    if (e != cudaSuccess) {
      (void)fail_locked(
          cuda_fail(ErrorCode::Internal, e,
                    "CUDA copy with agent '" + peer_->name + "' on device " + std::to_string(dev)));
      return state_;
    }
  }
  state_ = XferState::Done;
  return state_;
}

// ---- the backend -------------------------------------------------------------------

Status CudaBackend::init() {
  if (cudaGetDevice(&default_device_) != cudaSuccess) {
    cudaGetLastError();
    default_device_ = 0;
  }
  KVBM_TRY(open_worker(UCP_FEATURE_AM, &context_, &worker_, &address_));
  const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {
      {kAmPut, &CudaBackend::on_am_id<kAmPut>},
      {kAmGet, &CudaBackend::on_am_id<kAmGet>},
      {kAmAck, &CudaBackend::on_am_id<kAmAck>},
      {kAmGetReply, &CudaBackend::on_am_id<kAmGetReply>}};
  for (auto [id, cb] : handlers) KVBM_TRY(set_am_handler(worker_, id, cb, this));
  return {};
}

CudaBackend::~CudaBackend() {
  std::lock_guard<std::mutex> lock(mu_);
  // Wait for every copy still running on our streams before their memory goes.
  for (auto& [dev, list] : streams_) {
    DeviceGuard g(dev);
    for (cudaStream_t s : list) cudaStreamSynchronize(s);
  }
  auto peers = peers_;
  for (auto& [name, peer] : peers) {
    close_peer_locked(peer, err(ErrorCode::Cancelled, "backend shut down"));
  }
  for (Incoming& in : incoming_) {
    if (in.rndv) ucp_am_data_release(worker_, in.desc);
  }
  for (TargetJob& j : jobs_) {
    if (j.rndv && j.step == TargetJob::Step::WaitSlot) ucp_am_data_release(worker_, j.desc);
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
  for (auto& [id, op] : ops_) {
    for (auto& [seq, f] : op->flights) {
      if (f.event != nullptr) cudaEventDestroy(f.event);
    }
  }
  for (TargetJob& j : jobs_) {
    if (j.event != nullptr) cudaEventDestroy(j.event);
  }
  for (auto& [dev, list] : streams_) {
    DeviceGuard g(dev);
    for (cudaStream_t s : list) cudaStreamDestroy(s);
  }
}

cudaStream_t CudaBackend::stream(int device) {
  auto& list = streams_[device];
  if (list.empty()) {
    DeviceGuard g(device);
    for (size_t i = 0; i < streams_per_device_; ++i) {
      cudaStream_t s = nullptr;
      if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
        log(LogLevel::Error, cuda_fail(ErrorCode::Internal, e, "cudaStreamCreate").to_string());
        break;
      }
      list.push_back(s);
    }
    if (list.empty()) return nullptr;
  }
  return list[next_stream_++ % list.size()];
}

Status CudaBackend::copy_async(void* dst, const void* src, size_t len, int device, cudaStream_t s,
                               cudaEvent_t* event) {
  if (s == nullptr) return err(ErrorCode::Internal, "no CUDA stream on device ", device);
  DeviceGuard g(device);
  if (cudaError_t e = cudaMemcpyAsync(dst, src, len, cudaMemcpyDefault, s); e != cudaSuccess) {
    return cuda_fail(
        ErrorCode::Internal, e,
        "cudaMemcpyAsync of " + std::to_string(len) + " bytes on device " + std::to_string(device));
  }
  if (cudaError_t e = cudaEventCreateWithFlags(event, cudaEventDisableTiming); e != cudaSuccess) {
    *event = nullptr;
    return cuda_fail(ErrorCode::Internal, e, "cudaEventCreate");
  }
  if (cudaError_t e = cudaEventRecord(*event, s); e != cudaSuccess) {
    cudaEventDestroy(*event);
    *event = nullptr;
    return cuda_fail(ErrorCode::Internal, e, "cudaEventRecord");
  }
  return {};
}

Result<std::unique_ptr<LocalRegion>> CudaBackend::register_region(MemType type,
                                                                  const Desc& region) {
  if (type != MemType::Vram && type != MemType::Dram) {
    return err(ErrorCode::Unsupported, "CUDA registers VRAM and DRAM, not ", to_string(type));
  }
  std::string info;
  if (type == MemType::Vram) {
    if (region.dev_id > 1024) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr),
                 " names device ordinal ", region.dev_id);
    }
    const int dev = static_cast<int>(region.dev_id);
    KVBM_TRY(::kvbm::detail::check_device(dev));
    void* ptr = reinterpret_cast<void*>(region.addr);
    cudaPointerAttributes a{};
    if (cudaError_t e = cudaPointerGetAttributes(&a, ptr); e != cudaSuccess) {
      return cuda_fail(
          ErrorCode::InvalidArgument, e,
          "VRAM region at " + hex(region.addr) + " is not device memory: cudaPointerGetAttributes");
    }
    if (a.type != cudaMemoryTypeDevice) {
      const char* what = a.type == cudaMemoryTypeHost      ? "pinned host memory"
                         : a.type == cudaMemoryTypeManaged ? "managed memory"
                                                           : "not CUDA memory (host or freed)";
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr), " of ",
                 region.len, " bytes is ", what, ", not device memory");
    }
    if (a.device != dev) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr),
                 " lives on device ", a.device, ", not on device ", dev, " as its descriptor says");
    }
    CudaRegionInfo ri;
    ri.alloc_base = region.addr;
    ri.alloc_size = region.len;
    ri.device = dev;
    ri.pid = getpid();
    ri.boot_id = host_;
    if (auto range = address_range_fn()) {
      CUdeviceptr base = 0;
      size_t size = 0;
      DeviceGuard g(dev);
      if (range(&base, &size, static_cast<CUdeviceptr>(region.addr)) == CUDA_SUCCESS) {
        ri.alloc_base = base;
        ri.alloc_size = size;
      }
    }
    if (region.addr + region.len > ri.alloc_base + ri.alloc_size) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr), " of ",
                 region.len, " bytes extends past its allocation (", hex(ri.alloc_base), ", ",
                 ri.alloc_size, " bytes)");
    }
    cudaIpcMemHandle_t h{};
    DeviceGuard g(dev);
    if (cudaError_t e = cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(ri.alloc_base));
        e == cudaSuccess) {
      std::memcpy(ri.handle.data(), &h, sizeof h);
      info = ri.encode();
    } else {
      // E.g. memory from cudaMallocAsync pools: reachable locally and over the staged path.
      cudaGetLastError();
      log(LogLevel::Debug,
          "CUDA: no IPC handle for VRAM at " + hex(region.addr) + ": " + cudaGetErrorString(e));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto r = std::make_unique<CudaLocalRegion>(this, type, region, std::move(info));
  if (type == MemType::Dram) r->mapped = host_mapped(region.addr, region.len);
  locals_[{type, region.dev_id, region.addr}].push_back(r.get());
  return std::unique_ptr<LocalRegion>(std::move(r));
}

bool CudaBackend::local_range_ok(MemType type, uint64_t dev, uint64_t addr, uint64_t len) const {
  if (len == 0 || addr + len < addr) return false;
  auto it = locals_.upper_bound({type, dev, addr});
  if (it == locals_.begin()) return false;
  --it;
  const auto& [t, d, a] = it->first;
  if (t != type || d != dev) return false;
  for (const CudaLocalRegion* r : it->second) {
    if (addr >= r->desc.addr && len <= r->desc.len && addr - r->desc.addr <= r->desc.len - len)
      return true;
  }
  return false;
}

Status CudaBackend::connect(const std::string& agent, std::string_view connection_info) {
  auto info = CudaConnectionInfo::decode(connection_info);
  if (!info) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "': ", info.error().message);
  }
  auto peer = std::make_shared<CudaPeer>();
  peer->name = agent;
  peer->chunk_bytes = std::min<uint64_t>(chunk_bytes_, info->chunk_bytes);
  const bool same_host = info->boot_id == host_;
  if (agent == env_.agent_name || (same_host && info->pid == getpid())) {
    peer->mode = Mode::Self;  // addresses of this process
  } else {
    peer->mode = same_host && !force_staged_ ? Mode::Ipc : Mode::Staged;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (peer->mode != Mode::Self && !info->ucx_address.empty()) {
    const bool peer_errors = !(same_host && tls_allows_shared_memory());
    if (ucs_status_t st = open_endpoint(worker_, info->ucx_address, peer_errors,
                                        &FailedEndpoints::on_error, &failed_eps_, &peer->ep);
        st != UCS_OK) {
      // Not fatal: IPC (and the agent's other backends) still reach the peer; staged
      // requests to it then fail with Unsupported.
      peer->ep = nullptr;
      log(LogLevel::Warn,
          "CUDA: no staged path to agent '" + agent + "': ucp_ep_create: " + ucs_status_string(st));
    }
  }
  if (auto it = peers_.find(agent); it != peers_.end()) {
    auto old = it->second;  // the map's entry goes inside
    close_peer_locked(old,
                      err(ErrorCode::Remote, "connection to agent '", agent, "' was replaced"));
  }
  peers_[agent] = std::move(peer);
  return {};
}

void CudaBackend::unmap_locked(CudaRemoteRegion& r) {
  if (r.mapped == nullptr) return;
  r.mapped = nullptr;
  auto it = r.peer->mappings.find(r.key);
  if (it == r.peer->mappings.end() || --it->second.refs > 0) return;
  DeviceGuard g(it->second.device);
  if (cudaError_t e = cudaIpcCloseMemHandle(it->second.base); e != cudaSuccess) {
    log(LogLevel::Error, cuda_fail(ErrorCode::Internal, e, "cudaIpcCloseMemHandle").to_string());
  }
  r.peer->mappings.erase(it);
}

Result<char*> CudaBackend::map_locked(CudaRemoteRegion& r) {
  if (r.mapped != nullptr) return r.mapped;
  IpcMapping& m = r.peer->mappings[r.key];
  if (m.refs == 0) {
    cudaIpcMemHandle_t h{};
    std::memcpy(&h, r.ipc->handle.data(), sizeof h);
    DeviceGuard g(r.ipc->device);
    void* p = nullptr;
    if (cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
        e != cudaSuccess) {
      r.peer->mappings.erase(r.key);
      return cuda_fail(ErrorCode::Remote, e,
                       "cudaIpcOpenMemHandle of agent '" + r.peer->name + "' VRAM at " +
                           hex(r.desc.addr) + " (device " + std::to_string(r.ipc->device) + ")");
    }
    m.base = static_cast<char*>(p);
    m.device = r.ipc->device;
  }
  ++m.refs;
  r.mapped = m.base;
  return r.mapped;
}

void CudaBackend::close_peer_locked(const std::shared_ptr<CudaPeer>& peer, Error why) {
  if (!peer->failure) peer->failure = why;
  for (CudaCopyRequest* c : peer->copies) c->abort_locked(*peer->failure);
  peer->copies.clear();
  for (CudaRemoteRegion* r : peer->regions) r->mapped = nullptr;
  for (auto& [key, m] : peer->mappings) {
    DeviceGuard g(m.device);
    if (cudaIpcCloseMemHandle(m.base) != cudaSuccess) cudaGetLastError();
  }
  peer->mappings.clear();
  for (auto& [id, op] : ops_) {
    if (op->peer == peer) fail_op(*op, *peer->failure);
  }
  if (peer->ep != nullptr) {
    close_endpoint(worker_, peer->ep);
    peer->ep = nullptr;
  }
  auto it = peers_.find(peer->name);
  if (it != peers_.end() && it->second == peer) peers_.erase(it);
}

void CudaBackend::disconnect(const std::string& agent) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end()) return;
  auto peer = it->second;
  close_peer_locked(peer, err(ErrorCode::Remote, "agent '", agent, "' was disconnected"));
}

Result<std::unique_ptr<RemoteRegion>> CudaBackend::load_remote_region(const std::string& agent,
                                                                      MemType type,
                                                                      const Desc& region,
                                                                      std::string_view info) {
  if (type != MemType::Vram && type != MemType::Dram) {
    return err(ErrorCode::Unsupported, "CUDA reaches VRAM and DRAM, not ", to_string(type));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "CUDA is not connected to agent '", agent, "'");
  auto r = std::make_unique<CudaRemoteRegion>(this, it->second, type, region);
  if (type == MemType::Dram && it->second->mode == Mode::Self) {
    r->host_mapped = host_mapped(region.addr, region.len);
  }
  if (type == MemType::Vram && !info.empty() && it->second->mode != Mode::Self) {
    auto ri = CudaRegionInfo::decode(info, region.addr, region.len);
    if (!ri) return ri.error();
    if (it->second->mode == Mode::Ipc) {
      r->key.assign(ri->handle.data(), ri->handle.size());
      r->ipc = std::move(*ri);
    }
  }
  it->second->regions.insert(r.get());
  return std::unique_ptr<RemoteRegion>(std::move(r));
}

Result<std::unique_ptr<BackendRequest>> CudaBackend::prepare(
    Op op, const std::string& agent, std::vector<Segment> segments,
    std::optional<std::string> notification) {
  if (notification) {
    return err(ErrorCode::Unsupported, "the CUDA backend carries no notifications");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto pit = peers_.find(agent);
  if (pit == peers_.end())
    return err(ErrorCode::NotFound, "CUDA is not connected to agent '", agent, "'");
  auto peer = pit->second;
  if (peer->failure) return err(ErrorCode::Remote, "agent '", agent, "': ", peer->failure->message);

  bool staged = peer->mode == Mode::Staged;
  for (const Segment& s : segments) {
    auto* r = static_cast<CudaRemoteRegion*>(s.remote_region);
    if (r->peer != peer) {
      return err(ErrorCode::Remote, "region of agent '", agent, "' belongs to an older connection");
    }
    if (peer->mode == Mode::Ipc && !r->ipc) staged = true;  // DRAM, or VRAM without IPC
  }
  if (staged && peer->ep == nullptr) {
    return err(ErrorCode::Unsupported, "agent '", agent,
               "' is in another process and offers no staged CUDA path");
  }

  auto device_of = [&](const Segment& s, const CudaLocalRegion* l, const CudaRemoteRegion* r) {
    if (l->type == MemType::Vram) return static_cast<int>(s.local.dev_id);
    if (r->type == MemType::Vram && peer->mode == Mode::Self)
      return static_cast<int>(s.remote.dev_id);
    if (r->ipc) return r->ipc->device;
    return default_device_;
  };

  if (!staged) {
    std::vector<CopyItem> items;
    items.reserve(segments.size());
    for (const Segment& s : segments) {
      auto* l = static_cast<CudaLocalRegion*>(s.local_region);
      auto* r = static_cast<CudaRemoteRegion*>(s.remote_region);
      CudaRemoteRegion* ipc = nullptr;
      if (peer->mode == Mode::Ipc) {
        auto mapped = map_locked(*r);
        if (!mapped) return mapped.error();
        ipc = r;
      }
      const int dev = device_of(s, l, r);
      const bool host = l->type == MemType::Dram || r->type == MemType::Dram;
      // VRAM of two GPUs: cudaMemcpyAsync reaches across; the copy kernel would need peer
      // access, so such copies stay a call each.
      const int remote_dev = r->ipc ? r->ipc->device : static_cast<int>(s.remote.dev_id);
      const bool cross_gpu = !host && static_cast<int>(s.local.dev_id) != remote_dev;
      const bool mapped = l->type == MemType::Dram   ? l->mapped
                          : r->type == MemType::Dram ? r->host_mapped
                                                     : true;
      // Neighbours that continue each other on both sides become one copy.
      if (!items.empty()) {
        CopyItem& b = items.back();
        if (b.ipc == ipc && b.device == dev && b.host == host && b.cross_gpu == cross_gpu &&
            b.mapped == mapped && b.local + b.len == s.local.addr &&
            b.remote + b.len == s.remote.addr) {
          b.len += s.local.len;
          continue;
        }
      }
      items.push_back(
          {s.local.addr, s.remote.addr, s.local.len, dev, ipc, host, cross_gpu, mapped});
    }
    return std::unique_ptr<BackendRequest>(
        std::make_unique<CudaCopyRequest>(this, op, std::move(peer), std::move(items)));
  }

  auto chunks = std::make_shared<std::vector<StagedChunk>>();
  for (const Segment& s : segments) {
    auto* l = static_cast<CudaLocalRegion*>(s.local_region);
    auto* r = static_cast<CudaRemoteRegion*>(s.remote_region);
    const int dev = l->type == MemType::Vram ? static_cast<int>(s.local.dev_id) : default_device_;
    for (uint64_t off = 0; off < s.local.len; off += peer->chunk_bytes) {
      const size_t n = std::min<uint64_t>(peer->chunk_bytes, s.local.len - off);
      chunks->push_back(
          {s.local.addr + off, dev, s.remote.addr + off, s.remote.dev_id, r->type, n});
    }
  }
  return std::unique_ptr<BackendRequest>(
      std::make_unique<CudaStagedRequest>(this, op, std::move(peer), std::move(chunks)));
}

size_t CudaBackend::progress(LockWait wait) {
  // The progress thread never waits for the lock: a caller holding it is posting or
  // polling a copy, and a thread queued behind it makes every unlock a futex wake-up
  // (IPC copies of 1 MiB, 4 in flight: 0.78-0.81 of the d2d ceiling with a blocking
  // lock, 0.95-1.02 without). The next pass catches up. Agent::progress waits.
  auto lock = progress_lock(mu_, wait);
  if (!lock.owns_lock()) return 0;
  events_ = 0;
  while (ucp_worker_progress(worker_) != 0) {
  }
  if (!failed_eps_.empty()) {
    failed_eps_.close_failed(peers_, [this](const std::shared_ptr<CudaPeer>& peer, Error why) {
      close_peer_locked(peer, std::move(why));
    });
    ++events_;
  }
  if (!incoming_.empty()) {
    auto in = std::move(incoming_);
    incoming_.clear();
    if (!pools_ready_) {
      if (auto st = ensure_pools(); !st) log(LogLevel::Error, st.error().to_string());
    }
    for (Incoming& m : in) handle_incoming(m);
  }
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (advance_job(*it)) {
      it = jobs_.erase(it);
      ++events_;
    } else {
      ++it;
    }
  }
  for (auto it = ops_.begin(); it != ops_.end();) {
    StagedOp& op = *it->second;
    for (auto f = op.flights.begin(); f != op.flights.end();) {
      if (advance(op, f->second)) {
        f = op.flights.erase(f);
        ++events_;
      } else {
        ++f;
      }
    }
    pump(op);
    if (op.state.load() == XferState::InProgress && op.done == op.chunks->size()) {
      op.state.store(XferState::Done, std::memory_order_release);
      ++events_;
    }
    if (op.state.load() != XferState::InProgress && op.flights.empty()) {
      it = ops_.erase(it);
    } else {
      ++it;
    }
  }
  // Copies complete on the GPU, not through progress: report them, so sleeping waiters
  // wake. Only then: a copy reported as progress keeps the progress thread spinning on
  // this lock and on the driver, which a caller posting copies back to back pays for
  // (IPC at 1 MiB, 4 in flight: the CPU's cost per copy is the limit).
  if (!env_.has_waiters || env_.has_waiters()) {
    for (auto& [name, peer] : peers_) {
      for (CudaCopyRequest* c : peer->copies) events_ += c->newly_complete_locked() ? 1 : 0;
    }
  }
  return events_;
}

}  // namespace cuda

using namespace cuda;

Result<std::unique_ptr<Backend>> make_cuda_backend(const BackendEnv& env,
                                                   const BackendParams& params) {
  KVBM_TRY(check_param_keys(
      "CUDA", params, {"staged", "chunk_bytes", "bounce_buffers", "streams", "batch", "kernel"}));
  bool staged = false;
  if (auto it = params.find("staged"); it != params.end()) {
    if (it->second != "0" && it->second != "1") {
      return err(ErrorCode::InvalidArgument, "CUDA parameter staged must be 0 or 1, got '",
                 it->second, "'");
    }
    staged = it->second == "1";
  }
  auto chunk = number_param("CUDA", params, "chunk_bytes", 2 << 20, 4096, 1 << 30);
  auto slots = number_param("CUDA", params, "bounce_buffers", 8, 1, 1024);
  auto streams = number_param("CUDA", params, "streams", 4, 1, 64);
  auto batch = number_param("CUDA", params, "batch", 1, 0, 1);
  auto kernel = number_param("CUDA", params, "kernel", 1, 0, 1);
  for (const auto* v : {&chunk, &slots, &streams, &batch, &kernel}) {
    if (!*v) return v->error();
  }
  KVBM_TRY(cuda_device_count());
  auto backend = std::make_unique<CudaBackend>(env, staged, *chunk, *slots, *streams, *batch == 1,
                                               *kernel == 1);
  KVBM_TRY(backend->init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvbm::xfer::detail
