// The transfer engine's host copies (host_copy.h: why two schedulers): a persistent pool of
// threads that copy host memory asynchronously. A job is cut into parts (one per thread at
// least, none under 64 KiB; about 1 MiB each in large jobs), which the threads take in
// turn. Two kinds of job: a chunk list, cut into parts of equal bytes; and parts the caller
// defines (the engine's block copies, each part working out its own chunks:
// transfer/copy_paths.cc), so that a request of many blocks starts copying at once rather
// than after one thread has listed them all.
// Thread-safe: submit from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "copy/chunk.h"

namespace kvbm::detail {

class HostJob;

class HostPool {
 public:
  explicit HostPool(size_t threads);
  ~HostPool();  // finishes queued work, then joins
  size_t threads() const { return workers_.size(); }

  // Starts copying `chunks` (src/dst are host addresses) and returns the job to wait on.
  // Streaming stores from kStreamJobBytes on, or always with `streaming_stores` (for a
  // destination that something other than this CPU reads next, such as a DMA).
  std::shared_ptr<HostJob> submit(std::vector<Chunk> chunks, uint64_t bytes,
                                  bool streaming_stores = false);
  // Starts `parts` calls of copy(part) (each returning the number of chunks it copied)
  // and returns the job to wait on.
  std::shared_ptr<HostJob> submit_parts(size_t parts, std::function<size_t(size_t)> copy);
  // How many parts a job of `bytes` is cut into.
  size_t parts_for(uint64_t bytes) const;

  // Jobs at least this large outgrow the caches: their destination is written with
  // streaming stores (stream_copy.h; no read for ownership), about twice the useful
  // bandwidth of memcpy's stores.
  static constexpr uint64_t kStreamJobBytes = 32 << 20;
  // Copies n bytes, with streaming stores where `stream` (then stream_fence() before the
  // job reports done).
  static void copy_bytes(uint64_t dst, uint64_t src, uint64_t n, bool stream);

 private:
  std::shared_ptr<HostJob> start(std::shared_ptr<HostJob> job);
  void run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<HostJob>, size_t>> tasks_;  // (job, part)
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

class HostJob {
 public:
  // `parts` calls of copy(part), each returning the number of chunks it copied.
  HostJob(size_t parts, std::function<size_t(size_t)> copy);
  bool done() const;
  // True when finished within `timeout`.
  bool wait_for(std::chrono::milliseconds timeout);
  void run_part(size_t part);
  size_t parts() const { return parts_; }
  // The chunks the parts copied (each part's coalesced ranges): final once done().
  size_t chunks() const { return chunks_.load(std::memory_order_relaxed); }

 private:
  std::function<size_t(size_t)> copy_;
  size_t parts_;
  std::atomic<size_t> chunks_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t remaining_;
};

}  // namespace kvbm::detail
