#include "xfer/backends/cuda/cuda_backend.h"

#include <cuda.h>  // CUresult and CUdeviceptr only: the driver is reached through cudart
#include <cuda_runtime_api.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <tuple>

#include "common/cuda_util.h"
#include "kvbm/log.h"
#include "xfer/backends/cuda/cuda_info.h"

namespace kvbm::xfer::detail {
namespace {

using ::kvbm::detail::DeviceGuard;

constexpr uint32_t kChunkMagic = 0x4b564347;  // "KVCG"
enum : unsigned { kAmPut = 21, kAmGet = 22, kAmAck = 23, kAmGetReply = 24 };
constexpr size_t kStreamsPerDevice = 4;
constexpr size_t kMaxErrorBytes = 4096;

// A chunk of a staged transfer as the initiator asks for it: WRITE carries the bytes,
// READ asks for them. The target checks the range against its registered regions.
struct ChunkHeader {
  uint32_t magic;
  uint32_t mem_type;
  uint64_t op;
  uint64_t seq;
  uint64_t dev;
  uint64_t addr;
  uint64_t len;
};

// The target's answer: an ack (WRITE) or the bytes (READ); an error message otherwise.
struct ReplyHeader {
  uint32_t magic;
  int32_t code;  // -1: OK; else an ErrorCode
  uint64_t op;
  uint64_t seq;
};

std::string hex(uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

Error cuda_fail(ErrorCode code, cudaError_t e, std::string_view what) {
  cudaGetLastError();  // clear it, so later calls start clean
  return ::kvbm::detail::cuda_error(code, e, what);
}

Error ucx_fail(ErrorCode code, std::string_view what, ucs_status_t s) {
  return err(code, what, ": ", ucs_status_string(s));
}

// Whether UCX_TLS leaves UCX a shared-memory transport (which cannot report failed peers).
bool tls_allows_shared_memory() {
  const char* env = std::getenv("UCX_TLS");
  if (env == nullptr || *env == '\0' || *env == '^') return true;
  std::istringstream in(env);
  for (std::string t; std::getline(in, t, ',');) {
    for (const char* shm : {"all", "sm", "shm", "posix", "sysv", "cma", "knem", "xpmem", "mm"}) {
      if (t == shm) return true;
    }
  }
  return false;
}

using CuMemGetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

// cuMemGetAddressRange through cudart, so that the library never links libcuda.
CuMemGetAddressRange address_range_fn() {
  static CuMemGetAddressRange fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 3020, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<CuMemGetAddressRange>(nullptr);
    }
    return reinterpret_cast<CuMemGetAddressRange>(p);
  }();
  return fn;
}

// A fixed pool of pinned host buffers of one size.
class SlotPool {
 public:
  ~SlotPool() {
    for (void* p : all_) cudaFreeHost(p);
  }
  Status init(size_t count, size_t bytes) {
    if (!all_.empty()) return {};
    for (size_t i = 0; i < count; ++i) {
      void* p = nullptr;
      if (cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable); e != cudaSuccess) {
        return cuda_fail(ErrorCode::AllocationFailed, e,
                         "cudaHostAlloc of a " + std::to_string(bytes) + "-byte bounce buffer");
      }
      all_.push_back(p);
      free_.push_back(p);
    }
    return {};
  }
  void* acquire() {
    if (free_.empty()) return nullptr;
    void* p = free_.back();
    free_.pop_back();
    return p;
  }
  void release(void* p) {
    if (p != nullptr) free_.push_back(p);
  }

 private:
  std::vector<void*> all_;
  std::vector<void*> free_;
};

class CudaBackend;
class CudaRemoteRegion;
class CudaCopyRequest;

enum class Mode { Self, Ipc, Staged };

struct IpcMapping {
  char* base = nullptr;
  int device = 0;
  int refs = 0;
};

struct CudaPeer {
  std::string name;
  Mode mode = Mode::Self;
  uint64_t chunk_bytes = 0;  // staged chunks: at most what the peer's bounce buffers take
  ucp_ep_h ep = nullptr;
  std::optional<Error> failure;
  std::map<std::string, IpcMapping> mappings;  // opened allocations, by IPC handle bytes
  std::set<CudaRemoteRegion*> regions;
  std::set<CudaCopyRequest*> copies;  // posted copy requests, for disconnect
};

class CudaLocalRegion final : public LocalRegion {
 public:
  CudaLocalRegion(CudaBackend* b, MemType type, Desc desc, std::string info)
      : backend(b), type(type), desc(desc), info(std::move(info)) {}
  ~CudaLocalRegion() override;
  std::string remote_info() const override { return info; }

  CudaBackend* backend;
  MemType type;
  Desc desc;
  std::string info;
};

class CudaRemoteRegion final : public RemoteRegion {
 public:
  CudaRemoteRegion(CudaBackend* b, std::shared_ptr<CudaPeer> peer, MemType type, Desc desc)
      : backend(b), peer(std::move(peer)), type(type), desc(desc) {}
  ~CudaRemoteRegion() override;

  CudaBackend* backend;
  std::shared_ptr<CudaPeer> peer;
  MemType type;
  Desc desc;
  std::optional<CudaRegionInfo> ipc;  // VRAM of another process of this node
  std::string key;                    // the IPC handle bytes
  char* mapped = nullptr;             // the allocation's base here, while this holds a ref
};

// One chunk of a staged transfer on the initiator.
struct StagedChunk {
  uint64_t local;
  int device;  // for the bounce copy: the local VRAM's, or the default device
  uint64_t remote;
  uint64_t remote_dev;
  MemType remote_type;
  size_t len;
};

enum class Phase {
  WriteCopying,
  WriteSending,
  WriteAwaitAck,
  ReadAwaitReply,
  ReadReceiving,
  ReadCopying
};

struct Flight {
  uint64_t seq = 0;  // the chunk's index
  Phase phase;
  void* slot = nullptr;
  cudaEvent_t event = nullptr;
  int event_device = 0;
  bool ucx_pending = false;
  ucs_status_t ucx_status = UCS_OK;
  bool acked = false;
};

struct StagedOp {
  uint64_t id = 0;
  Op op = Op::Write;
  std::shared_ptr<CudaPeer> peer;
  std::shared_ptr<const std::vector<StagedChunk>> chunks;
  size_t next = 0;
  size_t done = 0;
  std::map<uint64_t, Flight> flights;  // by chunk index
  std::atomic<XferState> state{XferState::InProgress};
  Error error{ErrorCode::Internal, ""};
  bool cancelled = false;
};

// A chunk this backend serves as the target of a staged transfer.
struct TargetJob {
  enum class Step { WaitSlot, Receiving, Copying, Sending } step = Step::WaitSlot;
  unsigned kind;  // kAmPut or kAmGet
  ChunkHeader h;
  ucp_ep_h reply_ep;
  bool rndv = false;
  void* desc = nullptr;  // rendezvous descriptor (kAmPut)
  std::string eager;     // bytes that came with the message (kAmPut)
  void* slot = nullptr;
  cudaEvent_t event = nullptr;
  int event_device = 0;
  bool ucx_pending = false;
  ucs_status_t ucx_status = UCS_OK;
};

// A message received inside ucp_worker_progress, handled right after it.
struct Incoming {
  unsigned id;
  std::string header;
  ucp_ep_h reply_ep;
  bool rndv;
  void* desc;
  std::string data;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(BackendEnv env, bool force_staged, size_t chunk_bytes, size_t slots)
      : env_(std::move(env)),
        force_staged_(force_staged),
        chunk_bytes_(chunk_bytes),
        slots_(slots) {}
  ~CudaBackend() override;
  Status init();

  const std::string& name() const override { return name_; }
  bool can_register(MemType type) const override {
    return type == MemType::Vram || type == MemType::Dram;
  }
  bool supports(MemType local, MemType remote) const override {
    return (local == MemType::Vram && (remote == MemType::Vram || remote == MemType::Dram)) ||
           (local == MemType::Dram && remote == MemType::Vram);
  }
  std::string connection_info() const override {
    return CudaConnectionInfo{host_, static_cast<int64_t>(getpid()), address_, chunk_bytes_}
        .encode();
  }
  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc& region) override;
  Status connect(const std::string& agent, std::string_view connection_info) override;
  void disconnect(const std::string& agent) override;
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string& agent, MemType type,
                                                           const Desc& region,
                                                           std::string_view remote_info) override;
  Result<std::unique_ptr<BackendRequest>> prepare(Op op, const std::string& agent,
                                                  std::vector<Segment> segments,
                                                  std::optional<std::string> notification) override;
  bool supports_notifications() const override { return false; }
  Status send_notification(const std::string& agent, std::string_view) override {
    return err(ErrorCode::Unsupported, "the CUDA backend carries no notifications (to agent '",
               agent, "'); the agent sends them over UCX");
  }
  size_t progress() override;

  // Everything below runs with mu_ held.
  std::mutex mu_;
  cudaStream_t stream(int device);
  Status copy_async(void* dst, const void* src, size_t len, int device, cudaStream_t s,
                    cudaEvent_t* event);
  Result<char*> map_locked(CudaRemoteRegion& r);
  void unmap_locked(CudaRemoteRegion& r);
  void close_peer_locked(const std::shared_ptr<CudaPeer>& peer, Error why);
  bool local_range_ok(MemType type, uint64_t dev, uint64_t addr, uint64_t len) const;
  Status ensure_pools();
  void send_am(ucp_ep_h ep, unsigned id, std::string header, const void* data, size_t len,
               std::function<void(ucs_status_t)> done);
  void reply(ucp_ep_h ep, unsigned id, uint64_t op, uint64_t seq, const Error* e, const void* data,
             size_t len, std::function<void(ucs_status_t)> done);
  void pump(StagedOp& op);
  bool advance(StagedOp& op, Flight& f);
  void fail_op(StagedOp& op, Error e);
  void handle_incoming(Incoming& in);
  bool advance_job(TargetJob& job);
  static ucs_status_t on_am(unsigned id, void* arg, const void* header, size_t header_length,
                            void* data, size_t length, const ucp_am_recv_param_t* param);
  template <unsigned Id>
  static ucs_status_t on_am_id(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
    return on_am(Id, arg, header, header_length, data, length, param);
  }
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status);

  const std::string name_ = "CUDA";
  BackendEnv env_;
  const bool force_staged_;
  const size_t chunk_bytes_;
  const size_t slots_;
  const std::string host_ = cuda_host_identity();
  int default_device_ = 0;

  std::map<std::tuple<MemType, uint64_t, uint64_t>, std::vector<CudaLocalRegion*>> locals_;
  std::map<std::string, std::shared_ptr<CudaPeer>> peers_;
  std::map<int, std::vector<cudaStream_t>> streams_;
  size_t next_stream_ = 0;

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  SlotPool send_pool_;  // the initiator's bounce buffers
  SlotPool recv_pool_;  // the target's
  bool pools_ready_ = false;
  uint64_t next_op_ = 1;
  std::map<uint64_t, std::shared_ptr<StagedOp>> ops_;
  std::list<TargetJob> jobs_;
  std::vector<Incoming> incoming_;
  std::vector<std::pair<ucp_ep_h, ucs_status_t>> failed_eps_;
  size_t events_ = 0;
};

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

struct CopyItem {
  uint64_t local;
  uint64_t remote;  // an address here (Self), or the exporter's address (IPC)
  size_t len;
  int device;
  CudaRemoteRegion* ipc;  // null: `remote` is an address of this process
};

class CudaCopyRequest final : public BackendRequest {
 public:
  CudaCopyRequest(CudaBackend* b, Op op, std::shared_ptr<CudaPeer> peer,
                  std::vector<CopyItem> items)
      : backend_(b), op_(op), peer_(std::move(peer)), items_(std::move(items)) {}
  ~CudaCopyRequest() override {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    // Copies cannot be cancelled: wait for them, so that no byte lands after this.
    for (auto& [dev, ev] : events_) {
      if (ev == nullptr) continue;
      DeviceGuard g(dev);
      cudaEventSynchronize(ev);
      cudaEventDestroy(ev);
    }
    peer_->copies.erase(this);
  }

  Status post() override;
  XferState poll() override;
  Error error() const override {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    return error_;
  }
  // With the backend lock: true once, when the copies of the current post have finished.
  bool newly_complete_locked() {
    if (state_ != XferState::InProgress || signalled_) return false;
    for (auto& [dev, ev] : events_) {
      if (cudaEventQuery(ev) == cudaErrorNotReady) return false;
    }
    signalled_ = true;
    return true;
  }
  // With the backend lock: the peer is going away; wait for the copies and fail.
  void abort_locked(const Error& why) {
    for (auto& [dev, ev] : events_) {
      DeviceGuard g(dev);
      if (ev != nullptr) cudaEventSynchronize(ev);
    }
    if (state_ == XferState::InProgress) {
      state_ = XferState::Error;
      error_ = why;
    }
  }

 private:
  Status fail_locked(Error e) {
    state_ = XferState::Error;
    error_ = e;
    return e;
  }

  CudaBackend* backend_;
  Op op_;
  std::shared_ptr<CudaPeer> peer_;
  std::vector<CopyItem> items_;
  std::vector<std::pair<int, cudaEvent_t>> events_;  // one per device used
  XferState state_ = XferState::Idle;
  bool signalled_ = false;
  Error error_{ErrorCode::Internal, "not posted"};
};

Status CudaCopyRequest::post() {
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (state_ == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "CUDA request is already in progress");
  }
  if (peer_->failure) {
    return fail_locked(
        err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message));
  }
  std::map<int, cudaStream_t> used;
  // A failure after some copies were queued waits for those, so none lands later.
  auto drain = [&](Error e) {
    for (auto& [dev, s] : used) {
      DeviceGuard g(dev);
      if (s != nullptr) cudaStreamSynchronize(s);
    }
    return fail_locked(std::move(e));
  };
  for (const CopyItem& it : items_) {
    uint64_t remote = it.remote;
    if (it.ipc != nullptr) {
      if (it.ipc->mapped == nullptr) {
        return fail_locked(err(ErrorCode::Remote, "the CUDA IPC mapping of agent '", peer_->name,
                               "' region ", hex(it.ipc->desc.addr), " is closed"));
      }
      remote = reinterpret_cast<uint64_t>(it.ipc->mapped) + (it.remote - it.ipc->ipc->alloc_base);
    }
    void* dst = reinterpret_cast<void*>(op_ == Op::Write ? remote : it.local);
    const void* src = reinterpret_cast<const void*>(op_ == Op::Write ? it.local : remote);
    auto [slot, fresh] = used.try_emplace(it.device, nullptr);
    if (fresh) slot->second = backend_->stream(it.device);
    if (slot->second == nullptr) {
      return drain(err(ErrorCode::Internal, "no CUDA stream on device ", it.device));
    }
    DeviceGuard g(it.device);
    if (cudaError_t e = cudaMemcpyAsync(dst, src, it.len, cudaMemcpyDefault, slot->second);
        e != cudaSuccess) {
      return drain(cuda_fail(ErrorCode::Internal, e,
                             "cudaMemcpyAsync of " + std::to_string(it.len) + " bytes " +
                                 hex(reinterpret_cast<uint64_t>(src)) + " -> " +
                                 hex(reinterpret_cast<uint64_t>(dst)) + " on device " +
                                 std::to_string(it.device)));
    }
  }
  for (auto& [dev, s] : used) {
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

// ---- the staged path ---------------------------------------------------------------

class CudaStagedRequest final : public BackendRequest {
 public:
  CudaStagedRequest(CudaBackend* b, Op op, std::shared_ptr<CudaPeer> peer,
                    std::shared_ptr<const std::vector<StagedChunk>> chunks)
      : backend_(b), op_(op), peer_(std::move(peer)), chunks_(std::move(chunks)) {}
  ~CudaStagedRequest() override {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    if (!current_ || current_->state.load() != XferState::InProgress) return;
    current_->cancelled = true;
    // Copies into local memory cannot be cancelled: wait for them; the backend drains the rest.
    for (auto& [seq, f] : current_->flights) {
      if (f.event != nullptr) {
        DeviceGuard g(f.event_device);
        cudaEventSynchronize(f.event);
      }
    }
    backend_->fail_op(*current_, err(ErrorCode::Cancelled, "request destroyed in flight"));
  }
  Status post() override {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    if (current_ && current_->state.load() == XferState::InProgress) {
      return err(ErrorCode::InvalidArgument, "CUDA request is already in progress");
    }
    if (peer_->failure)
      return err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message);
    KVBM_TRY(backend_->ensure_pools());
    auto op = std::make_shared<StagedOp>();
    op->id = backend_->next_op_++;
    op->op = op_;
    op->peer = peer_;
    op->chunks = chunks_;
    backend_->ops_[op->id] = op;
    current_ = op;
    backend_->pump(*op);
    return {};
  }
  XferState poll() override {
    return current_ ? current_->state.load(std::memory_order_acquire) : XferState::Idle;
  }
  Error error() const override {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    return current_ ? current_->error : err(ErrorCode::Internal, "not posted");
  }

 private:
  CudaBackend* backend_;
  Op op_;
  std::shared_ptr<CudaPeer> peer_;
  std::shared_ptr<const std::vector<StagedChunk>> chunks_;
  std::shared_ptr<StagedOp> current_;
};

// ---- the backend -------------------------------------------------------------------

Status CudaBackend::init() {
  if (cudaGetDevice(&default_device_) != cudaSuccess) {
    cudaGetLastError();
    default_device_ = 0;
  }
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return ucx_fail(ErrorCode::Internal, "ucp_config_read", s);
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM;
  params.mt_workers_shared = 0;
  ucs_status_t s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return ucx_fail(ErrorCode::Internal, "ucp_init", s);
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // every call is made under mu_
  if (s = ucp_worker_create(context_, &wp, &worker_); s != UCS_OK) {
    return ucx_fail(ErrorCode::Internal, "ucp_worker_create", s);
  }
  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  if (s = ucp_worker_get_address(worker_, &addr, &addr_len); s != UCS_OK) {
    return ucx_fail(ErrorCode::Internal, "ucp_worker_get_address", s);
  }
  address_.assign(reinterpret_cast<const char*>(addr), addr_len);
  ucp_worker_release_address(worker_, addr);
  const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {
      {kAmPut, &CudaBackend::on_am_id<kAmPut>},
      {kAmGet, &CudaBackend::on_am_id<kAmGet>},
      {kAmAck, &CudaBackend::on_am_id<kAmAck>},
      {kAmGetReply, &CudaBackend::on_am_id<kAmGetReply>}};
  for (auto [id, cb] : handlers) {
    ucp_am_handler_param_t am{};
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    am.id = id;
    am.cb = cb;
    am.arg = this;
    am.flags = UCP_AM_FLAG_WHOLE_MSG;
    if (s = ucp_worker_set_am_recv_handler(worker_, &am); s != UCS_OK) {
      return ucx_fail(ErrorCode::Internal, "ucp_worker_set_am_recv_handler", s);
    }
  }
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
    for (size_t i = 0; i < kStreamsPerDevice; ++i) {
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

void CudaBackend::on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
  static_cast<CudaBackend*>(arg)->failed_eps_.emplace_back(ep, status);
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
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    std::string address = info->ucx_address;
    ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ep.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    ep.err_handler.cb = &CudaBackend::on_ep_error;
    ep.err_handler.arg = this;
    if (ucs_status_t s = ucp_ep_create(worker_, &ep, &peer->ep); s != UCS_OK) {
      return ucx_fail(ErrorCode::Remote, "CUDA staged path: ucp_ep_create to agent '" + agent + "'",
                      s);
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
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(peer->ep, &p);
    if (UCS_PTR_IS_PTR(req)) {
      for (int i = 0; i < 100000 && ucp_request_check_status(req) == UCS_INPROGRESS; ++i) {
        ucp_worker_progress(worker_);
      }
      ucp_request_free(req);
    }
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
      // Neighbours that continue each other on both sides become one copy.
      if (!items.empty()) {
        CopyItem& b = items.back();
        if (b.ipc == ipc && b.device == dev && b.local + b.len == s.local.addr &&
            b.remote + b.len == s.remote.addr) {
          b.len += s.local.len;
          continue;
        }
      }
      items.push_back({s.local.addr, s.remote.addr, s.local.len, dev, ipc});
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

Status CudaBackend::ensure_pools() {
  if (pools_ready_) return {};
  DeviceGuard g(default_device_);
  KVBM_TRY(send_pool_.init(slots_, chunk_bytes_));
  KVBM_TRY(recv_pool_.init(slots_, chunk_bytes_));
  pools_ready_ = true;
  return {};
}

struct SendCtx {
  std::string header;
  std::function<void(ucs_status_t)> done;
};

void CudaBackend::send_am(ucp_ep_h ep, unsigned id, std::string header, const void* data,
                          size_t len, std::function<void(ucs_status_t)> done) {
  auto* ctx = new SendCtx{std::move(header), std::move(done)};
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.user_data = ctx;
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    auto* c = static_cast<SendCtx*>(user);
    if (c->done) c->done(status);
    delete c;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, id, ctx->header.data(), ctx->header.size(), data, len, &p);
  if (UCS_PTR_IS_PTR(r)) return;
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
  delete ctx;
}

void CudaBackend::reply(ucp_ep_h ep, unsigned id, uint64_t op, uint64_t seq, const Error* e,
                        const void* data, size_t len, std::function<void(ucs_status_t)> done) {
  ReplyHeader h{kChunkMagic, e ? static_cast<int32_t>(e->code) : -1, op, seq};
  std::shared_ptr<std::string> text;  // an error's message, alive until the send completes
  if (e != nullptr) {
    text = std::make_shared<std::string>(e->message.substr(0, kMaxErrorBytes));
    data = text->data();
    len = text->size();
  }
  send_am(ep, id, std::string(reinterpret_cast<const char*>(&h), sizeof h), data, len,
          [text, done = std::move(done)](ucs_status_t s) {
            if (done) done(s);
          });
}

void CudaBackend::fail_op(StagedOp& op, Error e) {
  if (op.state.load() != XferState::InProgress) return;
  op.error = std::move(e);
  op.state.store(XferState::Error, std::memory_order_release);
  ++events_;
}

// Starts chunks while bounce buffers are free.
void CudaBackend::pump(StagedOp& op) {
  const auto& chunks = *op.chunks;
  while (op.state.load() == XferState::InProgress && op.next < chunks.size()) {
    void* slot = send_pool_.acquire();
    if (slot == nullptr) return;
    const uint64_t seq = op.next++;
    const StagedChunk& c = chunks[seq];
    Flight& f = op.flights[seq];
    f.seq = seq;
    f.slot = slot;
    if (op.op == Op::Write) {
      f.phase = Phase::WriteCopying;
      f.event_device = c.device;
      if (auto st = copy_async(slot, reinterpret_cast<const void*>(c.local), c.len, c.device,
                               stream(c.device), &f.event);
          !st) {
        fail_op(op, st.error());
      }
    } else {
      f.phase = Phase::ReadAwaitReply;
      ChunkHeader h{
          kChunkMagic, static_cast<uint32_t>(c.remote_type), op.id, seq, c.remote_dev, c.remote,
          c.len};
      send_am(op.peer->ep, kAmGet, std::string(reinterpret_cast<const char*>(&h), sizeof h),
              nullptr, 0, nullptr);
    }
  }
}

// Moves one chunk on; true when it is finished (successfully or not) and can be erased.
bool CudaBackend::advance(StagedOp& op, Flight& f) {
  for (;;) {
    if (f.event != nullptr) {
      cudaError_t e = cudaEventQuery(f.event);
      if (e == cudaErrorNotReady) return false;
      cudaEventDestroy(f.event);
      f.event = nullptr;
      if (e != cudaSuccess) fail_op(op, cuda_fail(ErrorCode::Internal, e, "staged CUDA copy"));
    }
    if (f.ucx_pending) return false;
    if (op.state.load() != XferState::InProgress) {
      send_pool_.release(f.slot);
      return true;
    }
    const StagedChunk& ch = (*op.chunks)[f.seq];
    switch (f.phase) {
      case Phase::WriteCopying: {
        f.phase = Phase::WriteSending;
        f.ucx_pending = true;
        Flight* fp = &f;
        ChunkHeader h{kChunkMagic,   static_cast<uint32_t>(ch.remote_type),
                      op.id,         f.seq,
                      ch.remote_dev, ch.remote,
                      ch.len};
        send_am(op.peer->ep, kAmPut, std::string(reinterpret_cast<const char*>(&h), sizeof h),
                f.slot, ch.len, [fp](ucs_status_t s) {
                  fp->ucx_pending = false;
                  fp->ucx_status = s;
                });
        continue;
      }
      case Phase::WriteSending:
        send_pool_.release(f.slot);
        f.slot = nullptr;
        if (f.ucx_status != UCS_OK) {
          fail_op(op, ucx_fail(ErrorCode::Remote, "staged WRITE to agent '" + op.peer->name + "'",
                               f.ucx_status));
          return true;
        }
        f.phase = Phase::WriteAwaitAck;
        continue;
      case Phase::WriteAwaitAck:
        if (!f.acked) return false;
        ++op.done;
        return true;
      case Phase::ReadAwaitReply:
        return false;
      case Phase::ReadReceiving: {
        if (f.ucx_status != UCS_OK) {
          fail_op(op, ucx_fail(ErrorCode::Remote, "staged READ from agent '" + op.peer->name + "'",
                               f.ucx_status));
          continue;
        }
        f.phase = Phase::ReadCopying;
        f.event_device = ch.device;
        if (auto st = copy_async(reinterpret_cast<void*>(ch.local), f.slot, ch.len, ch.device,
                                 stream(ch.device), &f.event);
            !st) {
          fail_op(op, st.error());
        }
        continue;
      }
      case Phase::ReadCopying:
        send_pool_.release(f.slot);
        f.slot = nullptr;
        ++op.done;
        return true;
    }
  }
}

ucs_status_t CudaBackend::on_am(unsigned id, void* arg, const void* header, size_t header_length,
                                void* data, size_t length, const ucp_am_recv_param_t* param) {
  // Inside ucp_worker_progress: only note the message; progress() handles it after.
  auto* self = static_cast<CudaBackend*>(arg);
  Incoming in;
  in.id = id;
  in.header.assign(static_cast<const char*>(header), header_length);
  in.reply_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
  in.rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  in.desc = in.rndv ? data : nullptr;
  if (!in.rndv) in.data.assign(static_cast<const char*>(data), length);
  const bool keep = in.rndv;  // a rendezvous descriptor stays until received or released
  self->incoming_.push_back(std::move(in));
  return keep ? UCS_INPROGRESS : UCS_OK;
}

void CudaBackend::handle_incoming(Incoming& in) {
  ++events_;
  auto drop = [&] {
    if (in.rndv) ucp_am_data_release(worker_, in.desc);
  };
  if (in.id == kAmPut || in.id == kAmGet) {
    if (in.header.size() != sizeof(ChunkHeader)) {
      log(LogLevel::Warn, "CUDA: dropped a staged chunk with a bad header");
      drop();
      return;
    }
    ChunkHeader h;
    std::memcpy(&h, in.header.data(), sizeof h);
    if (h.magic != kChunkMagic || in.reply_ep == nullptr) {
      log(LogLevel::Warn, "CUDA: dropped a malformed staged chunk");
      drop();
      return;
    }
    const bool put = in.id == kAmPut;
    const MemType type = static_cast<MemType>(h.mem_type);
    const bool type_ok = h.mem_type <= static_cast<uint32_t>(MemType::Unknown) &&
                         (type == MemType::Vram || type == MemType::Dram);
    const bool len_ok =
        h.len > 0 && h.len <= chunk_bytes_ && (in.rndv || !put || in.data.size() == h.len);
    if (!len_ok) {
      drop();
      Error e = err(ErrorCode::InvalidArgument, "staged chunk of ", h.len,
                    " bytes does not fit the bounce buffers of agent '", env_.agent_name, "' (",
                    chunk_bytes_, " bytes)");
      reply(in.reply_ep, put ? kAmAck : kAmGetReply, h.op, h.seq, &e, nullptr, 0, nullptr);
      return;
    }
    if (!type_ok || !local_range_ok(type, h.dev, h.addr, h.len)) {
      drop();
      Error e = err(ErrorCode::OutOfBounds, "staged ", put ? "WRITE" : "READ", " of ", h.len,
                    " bytes at ", hex(h.addr), " (device ", h.dev,
                    ") is not inside memory registered with agent '", env_.agent_name, "'");
      reply(in.reply_ep, put ? kAmAck : kAmGetReply, h.op, h.seq, &e, nullptr, 0, nullptr);
      return;
    }
    TargetJob job;
    job.kind = put ? kAmPut : kAmGet;
    job.h = h;
    job.reply_ep = in.reply_ep;
    job.rndv = in.rndv;
    job.desc = in.desc;
    job.eager = std::move(in.data);
    jobs_.push_back(std::move(job));
    return;
  }
  if (in.header.size() != sizeof(ReplyHeader)) {
    log(LogLevel::Warn, "CUDA: dropped a staged message with a bad header");
    drop();
    return;
  }
  ReplyHeader h;
  std::memcpy(&h, in.header.data(), sizeof h);
  auto oit = ops_.find(h.op);
  Flight* f = nullptr;
  if (h.magic == kChunkMagic && oit != ops_.end()) {
    auto fit = oit->second->flights.find(h.seq);
    if (fit != oit->second->flights.end()) f = &fit->second;
  }
  if (f == nullptr) {  // a cancelled op's late answer
    drop();
    return;
  }
  StagedOp& op = *oit->second;
  if (h.code >= 0) {
    std::string msg = in.rndv ? std::string("(message lost)") : in.data;
    drop();
    fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "': ", msg));
    return;
  }
  if (in.id == kAmAck) {
    drop();
    if (f->phase == Phase::WriteAwaitAck || f->phase == Phase::WriteSending) f->acked = true;
    return;
  }
  if (f->phase != Phase::ReadAwaitReply) {
    drop();
    return;
  }
  const StagedChunk& c = (*op.chunks)[h.seq];
  if (!in.rndv) {
    if (in.data.size() != c.len) {
      fail_op(op, err(ErrorCode::Remote, "agent '", op.peer->name, "' answered ", in.data.size(),
                      " bytes for a chunk of ", c.len));
      return;
    }
    std::memcpy(f->slot, in.data.data(), c.len);
    f->phase = Phase::ReadReceiving;
    f->ucx_status = UCS_OK;
    return;
  }
  f->phase = Phase::ReadReceiving;
  f->ucx_pending = true;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.user_data = f;
  p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user) {
    auto* fl = static_cast<Flight*>(user);
    fl->ucx_pending = false;
    fl->ucx_status = status;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, in.desc, f->slot, c.len, &p);
  if (!UCS_PTR_IS_PTR(r)) {
    f->ucx_pending = false;
    f->ucx_status = UCS_PTR_STATUS(r);
  }
}

// Moves one target-side job on; true when finished.
bool CudaBackend::advance_job(TargetJob& j) {
  const MemType type = static_cast<MemType>(j.h.mem_type);
  const int dev = type == MemType::Vram ? static_cast<int>(j.h.dev) : default_device_;
  void* target = reinterpret_cast<void*>(j.h.addr);
  for (;;) {
    if (j.event != nullptr) {
      cudaError_t e = cudaEventQuery(j.event);
      if (e == cudaErrorNotReady) return false;
      cudaEventDestroy(j.event);
      j.event = nullptr;
      if (e != cudaSuccess) {
        Error er = cuda_fail(ErrorCode::Internal, e, "staged copy at the target");
        recv_pool_.release(j.slot);
        j.slot = nullptr;
        reply(j.reply_ep, j.kind == kAmPut ? kAmAck : kAmGetReply, j.h.op, j.h.seq, &er, nullptr, 0,
              nullptr);
        return true;
      }
    }
    if (j.ucx_pending) return false;
    switch (j.step) {
      case TargetJob::Step::WaitSlot: {
        if (j.kind == kAmPut && !j.rndv) {
          // Small enough to have come with the message: copy it in directly.
          DeviceGuard g(dev);
          cudaError_t e = cudaMemcpy(target, j.eager.data(), j.h.len, cudaMemcpyDefault);
          Error er = e == cudaSuccess ? Error{ErrorCode::Internal, ""}
                                      : cuda_fail(ErrorCode::Internal, e, "staged copy");
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, e == cudaSuccess ? nullptr : &er, nullptr, 0,
                nullptr);
          return true;
        }
        j.slot = recv_pool_.acquire();
        if (j.slot == nullptr) return false;  // retried on the next progress
        if (j.kind == kAmPut) {
          j.step = TargetJob::Step::Receiving;
          j.ucx_pending = true;
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.user_data = &j;
          p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user) {
            auto* job = static_cast<TargetJob*>(user);
            job->ucx_pending = false;
            job->ucx_status = status;
            ucp_request_free(request);
          };
          ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, j.desc, j.slot, j.h.len, &p);
          if (!UCS_PTR_IS_PTR(r)) {
            j.ucx_pending = false;
            j.ucx_status = UCS_PTR_STATUS(r);
          }
          continue;
        }
        j.step = TargetJob::Step::Copying;
        j.event_device = dev;
        if (auto st = copy_async(j.slot, target, j.h.len, dev, stream(dev), &j.event); !st) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmGetReply, j.h.op, j.h.seq, &st.error(), nullptr, 0, nullptr);
          return true;
        }
        continue;
      }
      case TargetJob::Step::Receiving:
        if (j.ucx_status != UCS_OK) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          return true;  // the initiator sees its send fail
        }
        j.step = TargetJob::Step::Copying;
        j.event_device = dev;
        if (auto st = copy_async(target, j.slot, j.h.len, dev, stream(dev), &j.event); !st) {
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, &st.error(), nullptr, 0, nullptr);
          return true;
        }
        continue;
      case TargetJob::Step::Copying:
        if (j.kind == kAmPut) {
          // The bytes are in place: acknowledge, so the initiator may notify.
          recv_pool_.release(j.slot);
          j.slot = nullptr;
          reply(j.reply_ep, kAmAck, j.h.op, j.h.seq, nullptr, nullptr, 0, nullptr);
          return true;
        }
        j.step = TargetJob::Step::Sending;
        j.ucx_pending = true;
        {
          TargetJob* jp = &j;
          reply(j.reply_ep, kAmGetReply, j.h.op, j.h.seq, nullptr, j.slot, j.h.len,
                [jp](ucs_status_t s) {
                  jp->ucx_pending = false;
                  jp->ucx_status = s;
                });
        }
        continue;
      case TargetJob::Step::Sending:
        recv_pool_.release(j.slot);
        j.slot = nullptr;
        return true;
    }
  }
}

size_t CudaBackend::progress() {
  std::lock_guard<std::mutex> lock(mu_);
  events_ = 0;
  while (ucp_worker_progress(worker_) != 0) {
  }
  if (!failed_eps_.empty()) {
    auto failed = std::move(failed_eps_);
    failed_eps_.clear();
    for (auto& [ep, status] : failed) {
      for (auto& [name, peer] : peers_) {
        if (peer->ep != ep) continue;
        auto keep = peer;  // the map's entry goes inside
        close_peer_locked(
            keep, ucx_fail(ErrorCode::Remote, "connection to agent '" + name + "' failed", status));
        break;
      }
    }
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
  // Copies complete on the GPU, not through progress: report them, so waiters wake.
  for (auto& [name, peer] : peers_) {
    for (CudaCopyRequest* c : peer->copies) events_ += c->newly_complete_locked() ? 1 : 0;
  }
  return events_;
}

size_t parse_size(const BackendParams& params, const std::string& key, size_t fallback) {
  auto it = params.find(key);
  if (it == params.end()) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(it->second.c_str(), &end, 10);
  if (end == it->second.c_str() || *end != '\0') return 0;
  return v;
}

}  // namespace

Result<std::unique_ptr<Backend>> make_cuda_backend(const BackendEnv& env,
                                                   const BackendParams& params) {
  for (const auto& [k, v] : params) {
    if (k != "staged" && k != "chunk_bytes" && k != "bounce_buffers") {
      return err(ErrorCode::InvalidArgument, "unknown CUDA backend parameter '", k,
                 "' (known: staged, chunk_bytes, bounce_buffers)");
    }
  }
  bool staged = false;
  if (auto it = params.find("staged"); it != params.end()) {
    if (it->second != "0" && it->second != "1") {
      return err(ErrorCode::InvalidArgument, "CUDA parameter staged must be 0 or 1, got '",
                 it->second, "'");
    }
    staged = it->second == "1";
  }
  const size_t chunk = parse_size(params, "chunk_bytes", 2 << 20);
  if (chunk < 4096 || chunk > (size_t{1} << 30)) {
    return err(ErrorCode::InvalidArgument, "CUDA parameter chunk_bytes must be 4096..1 GiB, got '",
               params.count("chunk_bytes") ? params.at("chunk_bytes") : "", "'");
  }
  const size_t slots = parse_size(params, "bounce_buffers", 8);
  if (slots < 1 || slots > 1024) {
    return err(ErrorCode::InvalidArgument, "CUDA parameter bounce_buffers must be 1..1024, got '",
               params.count("bounce_buffers") ? params.at("bounce_buffers") : "", "'");
  }
  KVBM_TRY(cuda_device_count());
  auto backend = std::make_unique<CudaBackend>(env, staged, chunk, slots);
  KVBM_TRY(backend->init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvbm::xfer::detail
