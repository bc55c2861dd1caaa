// The outcome of a job that a worker thread runs (the File and Staged paths): set once by
// the worker, read and waited on by the job's Transfer. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "kvbm/result.h"

namespace kvbm::detail {

class Completion {
 public:
  // The outcome once finished; nullopt while running.
  std::optional<Status> result() const {
    std::lock_guard lock(mu_);
    return result_;
  }
  std::optional<Status> wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return result_.has_value(); });
    return result_;
  }
  // Called once, by the worker, when the job has stopped touching its memory.
  void finish(Status s) {
    std::lock_guard lock(mu_);
    result_ = std::move(s);
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Status> result_;
};

}  // namespace kvbm::detail
