// The CUDA backend's copies within this process and through CUDA IPC: a prepared list of
// copies, posted per device as one batch, one kernel launch or a call each (enqueue()),
// completed by one event per device. Guarded by the backend's lock.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <utility>
#include <vector>

#include "copy/gpu_batch.h"
#include "copy/gpu_copy.h"
#include "xfer/backend.h"
#include "xfer/backends/cuda/cuda_common.h"
#include "xfer/backends/cuda/cuda_peer.h"

namespace kvbm::xfer::detail::cuda {

// The copy kernels are copy/gpu_copy.h's piece-list entry points.
using kvbm::detail::CopyPiece;
using kvbm::detail::kCopyOneMaxBytes;
using kvbm::detail::kCopyPieceBytes;
using kvbm::detail::launch_copy_list;
using kvbm::detail::launch_copy_one;

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
  ~CudaCopyRequest() override;

  Status post() override;
  XferState poll() override;
  Error error() const override;
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
    kvbm::detail::CopyList copies;
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

}  // namespace kvbm::xfer::detail::cuda
