// The Staged path of the transfer engine: Disk <-> Disk and Disk <-> Device, through a host
// staging buffer the copier owns. Disk sides move with batched io_uring (UringBatch), Device
// sides with the CUDA path (CudaCopier::submit, reading or writing the pinned staging).
//
// Bounded staging: the buffer is TransferEngineOptions::staging_bytes, used as two halves.
// A request is cut into batches that fit one half (copy/staging.h; a chunk larger than a
// half is split), and batch i's second hop (file writes, or the CUDA scatter) runs while
// batch i+1's first hop fills the other half. The buffer is allocated on the first request
// that needs it and kept: pinned (cudaHostAlloc) once a request involves a Device,
// page-aligned System memory until then (so Disk <-> Disk needs no GPU). Pieces whose file offset
// and length are 4096-aligned start on a page of the buffer, so their I/O is direct where the file
// is O_DIRECT.
//
// Ownership: the copier owns its thread, its io_uring and the staging buffer; the layouts
// and the CudaCopier named by a request must outlive the request's job. Thread safety:
// submit from any thread. Requests run one at a time, in submission order, on the copier's
// thread: they share the one staging buffer, so a request waits for those before it.
// Errors: a job's status is the first failing hop's error (UringBatch's Io naming the fd,
// its path and the offset; the CUDA path's error), or AllocationFailed/DeviceUnavailable for
// the staging buffer. A failed job stops at the batch that failed, after its hops in flight
// have finished; the destination is then partly written.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/uring_batch.h"
#include "copy/staging.h"
#include "transfer/completion.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class CudaCopier;

struct StagedRequest {
  std::vector<Chunk> chunks;   // from build_chunks: Disk addresses are file offsets
  std::vector<int> src_fds;    // a Disk source: the fd of each region; empty otherwise
  std::vector<int> dst_fds;    // a Disk destination: likewise
  CudaCopier* cuda = nullptr;  // the GPU of a Device side; null for Disk <-> Disk
};

class StagedJob : public Completion {
 public:
  explicit StagedJob(StagedRequest request) : request_(std::move(request)) {}

 private:
  friend class StagedCopier;
  StagedRequest request_;
};

class StagedCopier {
 public:
  // staging_bytes: a positive multiple of 8192 (two 4096-aligned halves; the engine checks).
  // Io/InvalidArgument from UringBatch::create.
  static Result<std::unique_ptr<StagedCopier>> create(size_t staging_bytes, unsigned queue_depth);
  ~StagedCopier();  // finishes queued jobs, then joins
  StagedCopier(const StagedCopier&) = delete;
  StagedCopier& operator=(const StagedCopier&) = delete;

  // Precondition: exactly one side is Disk with a Device other side (cuda set), or both
  // sides are Disk (cuda null).
  std::shared_ptr<StagedJob> submit(StagedRequest request);

 private:
  StagedCopier(std::unique_ptr<UringBatch> batch, size_t staging_bytes);
  void loop();
  Status run(const StagedRequest& r);
  Result<char*> staging(bool pinned);

  std::unique_ptr<UringBatch> batch_;  // used by the copier's thread only
  size_t staging_bytes_;
  std::optional<StagingBuffer> staging_;  // pinned from the first Device request on
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<StagedJob>> jobs_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace kvbm::detail
