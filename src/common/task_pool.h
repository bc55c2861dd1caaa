// A persistent pool of threads that runs the n tasks of one call in parallel: run(n, fn)
// calls fn(0) .. fn(n - 1) on the pool's threads and the calling thread, and returns once
// every call has returned. For work that gains from being in flight together (synchronous
// cuFile I/O, the parts of one large memory copy); fn must not throw.
//
// With a spin time, a thread that ran out of tasks (and a caller waiting for the last
// ones) polls for that long before it sleeps: calls that come back to back then find the
// threads awake, where waking a sleeping thread costs tens of microseconds, as long as
// copying a MiB. That spinning costs a core each meanwhile.
// Thread safety: run() may be called from several threads; calls take turns.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvbm::detail {

class TaskPool {
 public:
  // `threads` extra threads (0: run() works alone on the calling thread).
  explicit TaskPool(size_t threads, std::chrono::microseconds spin = {});
  ~TaskPool();  // joins the threads; no run() may be in progress
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void run(size_t n, const std::function<void(size_t)>& fn);
  // As run(), unless another call is in progress: then it runs nothing and returns false.
  bool try_run(size_t n, const std::function<void(size_t)>& fn);
  size_t threads() const { return threads_.size(); }

 private:
  void run_locked(size_t n, const std::function<void(size_t)>& fn);  // run_mu_ held
  void loop();
  // Runs tasks of the current call until none is left; called with mu_ held.
  void drain(std::unique_lock<std::mutex>& lock);
  // Polls `ready` for up to spin_, without mu_ held; whether it became true.
  bool spin_until(const std::function<bool()>& ready) const;

  const std::chrono::microseconds spin_;
  std::mutex run_mu_;  // one run() at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0, next_ = 0;
  std::atomic<size_t> finished_{0};  // written with mu_ held; read by a spinning caller
  std::atomic<uint64_t> calls_{0};   // likewise; what a spinning thread watches for
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace kvbm::detail
