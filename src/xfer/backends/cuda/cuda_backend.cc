#include "xfer/backends/cuda/cuda_backend.h"

#include "xfer/backend_params.h"
#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail {
namespace cuda {

Status CudaBackend::init() {
  if (cudaGetDevice(&default_device_) != cudaSuccess) {
    cudaGetLastError();
    default_device_ = 0;
  }
  KVBM_TRY(open_worker(UCP_FEATURE_AM, &context_, &worker_, &address_));
  const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {
      {kAmRequest, &CudaBackend::on_am_id<kAmRequest>},
      {kAmReply, &CudaBackend::on_am_id<kAmReply>}};
  for (auto [id, cb] : handlers) KVBM_TRY(set_am_handler(worker_, id, cb, this));
  return set_am_handler(worker_, kAmPoll, &CudaBackend::on_poll, this);
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
  for (TargetJob& j : waiting_) {
    if (j.rndv) ucp_am_data_release(worker_, j.desc);
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
  peer->token = next_token_++;
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
  outstanding_.drop_peer(peer.get());
  if (peer->ep != nullptr) {
    owed_.forget(peer->ep);  // answers owed to the peer on our endpoint go with it
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

  if (!staged) return prepare_copies(op, std::move(peer), segments);
  return prepare_staged(op, std::move(peer), segments);
}

int CudaBackend::device_of(const CudaPeer& peer, const Segment& s, const CudaLocalRegion* l,
                           const CudaRemoteRegion* r) const {
  if (l->type == MemType::Vram) return static_cast<int>(s.local.dev_id);
  if (r->type == MemType::Vram && peer.mode == Mode::Self) return static_cast<int>(s.remote.dev_id);
  if (r->ipc) return r->ipc->device;
  return default_device_;
}

// Copies within this process or through IPC: neighbours merged, IPC allocations mapped.
Result<std::unique_ptr<BackendRequest>> CudaBackend::prepare_copies(
    Op op, std::shared_ptr<CudaPeer> peer, const std::vector<Segment>& segments) {
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
    const int dev = device_of(*peer, s, l, r);
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
    items.push_back({s.local.addr, s.remote.addr, s.local.len, dev, ipc, host, cross_gpu, mapped});
  }
  return std::unique_ptr<BackendRequest>(
      std::make_unique<CudaCopyRequest>(this, op, std::move(peer), std::move(items)));
}

// The staged path: each segment in chunks of at most the peer's bounce buffer size.
Result<std::unique_ptr<BackendRequest>> CudaBackend::prepare_staged(
    Op op, std::shared_ptr<CudaPeer> peer, const std::vector<Segment>& segments) {
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

// Moves the chunks we serve on. A buffer that a finished chunk gives back goes to the
// next waiting chunk in the same pass, not the next one: chunks stream through a few
// buffers, and a waiting chunk's bytes sit in UCX until it has one.
void CudaBackend::serve_jobs() {
  for (;;) {
    if (!waiting_.empty()) admit_jobs();
    bool finished = false;
    for (auto it = jobs_.begin(); it != jobs_.end();) {
      if (advance_job(*it)) {
        it = jobs_.erase(it);
        ++events_;
        finished = true;
      } else {
        ++it;
      }
    }
    if (!finished || waiting_.empty()) return;
  }
}

size_t CudaBackend::progress(LockWait wait) {
  // The progress thread never waits for the lock: a caller holding it is posting or
  // polling a copy, and a thread queued behind it makes every unlock a futex wake-up, which
  // slows IPC copies in flight (BENCHMARKS.md). The next pass catches up.
  // Agent::progress waits.
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
  serve_jobs();
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
    if (op.state.load() == XferState::InProgress && op.w.complete()) {
      op.state.store(XferState::Done, std::memory_order_release);
      ++events_;
    }
    if (op.state.load() != XferState::InProgress && op.flights.empty()) {
      it = ops_.erase(it);
    } else {
      ++it;
    }
  }
  poll_due();
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
