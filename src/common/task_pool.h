// A persistent pool of threads that runs the n tasks of one call in parallel: run(n, fn)
// calls fn(0) .. fn(n - 1) on the pool's threads and the calling thread, and returns once
// every call has returned. For blocking work that gains from being in flight together
// (synchronous cuFile I/O); fn must not throw.
// Thread safety: run() may be called from several threads; calls take turns.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvbm::detail {

class TaskPool {
 public:
  // `threads` extra threads (0: run() works alone on the calling thread).
  explicit TaskPool(size_t threads);
  ~TaskPool();  // joins the threads; no run() may be in progress
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void run(size_t n, const std::function<void(size_t)>& fn);

 private:
  void loop();
  // Runs tasks of the current call until none is left; called with mu_ held.
  void drain(std::unique_lock<std::mutex>& lock);

  std::mutex run_mu_;  // one run() at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0, next_ = 0, finished_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvbm::detail
