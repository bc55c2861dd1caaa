// The CUDA backend's staged path (cuda_backend.h): chunks of a transfer go through pools
// of pinned bounce buffers and UCX active messages (staged_wire.h) on the backend's own
// worker. The initiator's state per transfer and chunk, the target's per chunk it serves.
// Guarded by the backend's lock.
#pragma once

#include <cuda_runtime_api.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "xfer/backend.h"
#include "xfer/backends/cuda/cuda_common.h"
#include "xfer/backends/cuda/cuda_peer.h"
#include "xfer/backends/cuda/staged_wire.h"

namespace kvbm::xfer::detail::cuda {

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

class CudaStagedRequest final : public BackendRequest {
 public:
  CudaStagedRequest(CudaBackend* b, Op op, std::shared_ptr<CudaPeer> peer,
                    std::shared_ptr<const std::vector<StagedChunk>> chunks)
      : backend_(b), op_(op), peer_(std::move(peer)), chunks_(std::move(chunks)) {}
  ~CudaStagedRequest() override;
  Status post() override;
  XferState poll() override {
    return current_ ? current_->state.load(std::memory_order_acquire) : XferState::Idle;
  }
  Error error() const override;

 private:
  CudaBackend* backend_;
  Op op_;
  std::shared_ptr<CudaPeer> peer_;
  std::shared_ptr<const std::vector<StagedChunk>> chunks_;
  std::shared_ptr<StagedOp> current_;
};

}  // namespace kvbm::xfer::detail::cuda
