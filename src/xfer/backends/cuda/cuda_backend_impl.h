// The CUDA backend's internals, shared by its two halves: cuda_backend.cc (the backend,
// regions, copies within this process and through CUDA IPC) and cuda_staged.cc (the
// staged path: pinned bounce buffers and UCX active messages). Not a public interface.
#pragma once

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
#include <tuple>

#include "common/cuda_util.h"
#include "common/hex.h"
#include "kvbm/log.h"
#include "xfer/backend.h"
#include "xfer/backends/cuda/copy_list.h"
#include "xfer/backends/cuda/cuda_info.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::cuda {

using ::kvbm::detail::DeviceGuard;

constexpr uint32_t kChunkMagic = 0x4b564347;  // "KVCG"
enum : unsigned { kAmPut = 21, kAmGet = 22, kAmAck = 23, kAmGetReply = 24 };
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

using kvbm::detail::hex;

inline Error cuda_fail(ErrorCode code, cudaError_t e, std::string_view what) {
  cudaGetLastError();  // clear it, so later calls start clean
  return ::kvbm::detail::cuda_error(code, e, what);
}

using CuMemGetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

// cuMemGetAddressRange through cudart, so that the library never links libcuda.
inline CuMemGetAddressRange address_range_fn() {
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
  bool mapped = false;  // DRAM a kernel can address as it is (pinned, mapped: host_mapped())
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
  bool host_mapped = false;           // this process's DRAM a kernel can address (Self)
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
  CudaBackend(BackendEnv env, bool force_staged, size_t chunk_bytes, size_t slots, size_t streams,
              bool batch_copies, bool kernel_copies)
      : env_(std::move(env)),
        force_staged_(force_staged),
        chunk_bytes_(chunk_bytes),
        slots_(slots),
        streams_per_device_(streams),
        batch_copies_(batch_copies),
        kernel_copies_(kernel_copies) {}
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
  size_t progress(LockWait wait) override;

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

  const std::string name_ = "CUDA";
  BackendEnv env_;
  const bool force_staged_;
  const size_t chunk_bytes_;
  const size_t slots_;
  const size_t streams_per_device_;  // requests go round-robin over them
  // A request's copies with a host side go as one cudaMemcpyBatchAsync per device (CUDA
  // 12.8+), not a cudaMemcpyAsync each; off by batch=0, or once the driver refuses it.
  std::atomic<bool> batch_copies_;
  // Several VRAM <-> VRAM copies of a request go as one launch of the copy_list kernel
  // (copy_list.h), as do several small ones between VRAM and mapped pinned memory; off by
  // kernel=0.
  const bool kernel_copies_;
  const std::string host_ = host_boot_id();
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
  FailedEndpoints failed_eps_;  // noted in callbacks, handled in progress()
  size_t events_ = 0;
};

// ---- copies within this process, and through CUDA IPC -------------------------------

struct CopyItem {
  uint64_t local;
  uint64_t remote;  // an address here (Self), or the exporter's address (IPC)
  size_t len;
  int device;
  CudaRemoteRegion* ipc;  // null: `remote` is an address of this process
  bool host;              // one side is DRAM
  bool cross_gpu;         // VRAM of one GPU to VRAM of another
  bool mapped;            // the DRAM side, if any, is addressable by a kernel as it is
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
    for (auto& d : used_) {
      if (d.pieces != nullptr) cudaFreeHost(d.pieces);
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
  // post()'s copies by device, kept for reuse (capacity) across posts.
  struct DeviceCopies {
    int device;
    bool host;       // the copies have a host side (enqueue() batches only those)
    bool cross_gpu;  // VRAM to another GPU's VRAM (never the copy kernel)
    bool mapped;     // every host side is mapped pinned memory (the kernel may take them)
    cudaStream_t stream;
    std::vector<void*> dsts;
    std::vector<const void*> srcs;
    std::vector<size_t> sizes;
    CopyPiece* pieces = nullptr;  // the copy_list kernel's table: mapped pinned host memory
    size_t piece_capacity = 0;
  };
  std::vector<DeviceCopies> used_;
  size_t used_count_ = 0;  // entries of used_ in this post
  Status enqueue(DeviceCopies& d);
  XferState state_ = XferState::Idle;
  bool signalled_ = false;
  Error error_{ErrorCode::Internal, "not posted"};
};

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

}  // namespace kvbm::xfer::detail::cuda
