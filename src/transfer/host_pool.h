// A persistent pool of threads that copy host memory. A job's bytes are split into equal
// parts (one per thread at least, none under 64 KiB; about 1 MiB each in large jobs), each
// part a range of the chunk list, which the threads take in turn.
// Thread-safe: submit from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class HostJob;

class HostPool {
 public:
  explicit HostPool(size_t threads);
  ~HostPool();  // finishes queued work, then joins
  size_t threads() const { return workers_.size(); }

  // Starts copying `chunks` (src/dst are host addresses) and returns the job to wait on.
  std::shared_ptr<HostJob> submit(std::vector<Chunk> chunks, uint64_t bytes);

 private:
  void run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<HostJob>, size_t>> tasks_;  // (job, part)
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

class HostJob {
 public:
  HostJob(std::vector<Chunk> chunks, uint64_t bytes, size_t parts);
  bool done() const;
  // True when finished within `timeout`.
  bool wait_for(std::chrono::milliseconds timeout);
  void run_part(size_t part);
  size_t parts() const { return parts_; }

 private:
  std::vector<Chunk> chunks_;
  std::vector<uint64_t> starts_;  // byte offset of each chunk within the job
  uint64_t bytes_;
  size_t parts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t remaining_;
};

}  // namespace kvbm::detail
