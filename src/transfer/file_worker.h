// The file path of the transfer engine: one thread that owns an io_uring (UringBatch) and
// streams each request's file ops through it as one group, requests overlapping. Thread-
// safe: submit from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/uring_batch.h"
#include "transfer/completion.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class FileJob : public Completion {
 public:
  explicit FileJob(std::vector<FileOp> ops) : ops_(std::move(ops)) {}

 private:
  friend class FileWorker;
  std::vector<FileOp> ops_;
};

class FileWorker {
 public:
  // Io/InvalidArgument from UringBatch::create.
  static Result<std::unique_ptr<FileWorker>> create(unsigned queue_depth);
  ~FileWorker();  // finishes queued jobs, then joins
  std::shared_ptr<FileJob> submit(std::vector<FileOp> ops);

 private:
  explicit FileWorker(std::unique_ptr<UringBatch> batch);
  void run();

  std::unique_ptr<UringBatch> batch_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<FileJob>> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kvbm::detail
