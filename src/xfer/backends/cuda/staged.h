// The CUDA backend's staged path (cuda_backend.h): the chunked staging protocol
// (ucx_common/staging_*.h) on the backend's own worker, its chunks' bytes moved by CUDA
// copies through pools of pinned bounce buffers. The initiator's state per transfer and
// chunk, the target's per chunk it serves. Guarded by the backend's lock.
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
#include "xfer/ucx_common/staging_am.h"
#include "xfer/ucx_common/staging_pool.h"
#include "xfer/ucx_common/staging_window.h"
#include "xfer/ucx_common/staging_wire.h"

namespace kvbm::xfer::detail::cuda {

// The protocol's messages: a chunk request (a WRITE's bytes ride along), the target's
// one reply to it (a READ's bytes ride along), and the initiator's poll, inside whose
// callback the target sends the replies it owes (staging_owed.h).
enum : unsigned { kAmRequest = 21, kAmReply = 23, kAmPoll = 25 };

// Pinned host memory for the bounce buffers, allocated with the caller's device current.
staging::Allocator pinned_allocator();

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
  staging::Buffer slot{nullptr, {}};
  cudaEvent_t event = nullptr;  // the bounce copy's
  int event_device = 0;
  staging::Pending ucx;  // the chunk's send (WRITE) or receipt (READ)
  bool acked = false;
};

struct StagedOp {
  uint64_t id = 0;
  Op op = Op::Write;
  std::shared_ptr<CudaPeer> peer;
  std::shared_ptr<const std::vector<StagedChunk>> chunks;
  // Chunks sent and done; in flight as many as the initiator's bounce buffers allow.
  staging::Window w{0};
  std::map<uint64_t, Flight> flights;  // by chunk index
  std::atomic<XferState> state{XferState::InProgress};
  Error error{ErrorCode::Internal, ""};
  bool cancelled = false;
};

// A chunk this backend serves as the target of a staged transfer.
struct TargetJob {
  enum class Step { Start, Receiving, Copying } step = Step::Start;
  staging::ChunkRequest h;  // space: Vram or Dram; dev, addr: the target memory
  ucp_ep_h reply_ep;
  bool rndv = false;
  void* desc = nullptr;               // rendezvous descriptor (a WRITE's), released once received
  std::string eager;                  // bytes that came with the message (a WRITE's)
  staging::Buffer slot{nullptr, {}};  // from Start on, but for a WRITE that came whole
  cudaEvent_t event = nullptr;        // the bounce copy's
  int event_device = 0;
  staging::Pending ucx;  // a WRITE's receipt
};

// Whether the copy `*event` marks has ended: then the event is gone and *result holds
// the copy's outcome. True at once without an event.
bool copy_ended(cudaEvent_t* event, cudaError_t* result);

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
