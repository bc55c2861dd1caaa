#include "common/task_pool.h"

namespace kvbm::detail {

TaskPool::TaskPool(size_t threads) {
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
}

TaskPool::~TaskPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void TaskPool::run(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  std::lock_guard<std::mutex> one(run_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  fn_ = &fn;
  n_ = n;
  next_ = 0;
  finished_ = 0;
  if (n > 1) work_cv_.notify_all();
  drain(lock);
  done_cv_.wait(lock, [&] { return finished_ == n_; });
  fn_ = nullptr;  // no thread touches fn past this point: every task has finished
}

void TaskPool::drain(std::unique_lock<std::mutex>& lock) {
  while (fn_ != nullptr && next_ < n_) {
    const size_t i = next_++;
    const auto* fn = fn_;
    lock.unlock();
    (*fn)(i);
    lock.lock();
    if (++finished_ == n_) done_cv_.notify_all();
  }
}

void TaskPool::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stop_ || (fn_ != nullptr && next_ < n_); });
    if (stop_) return;
    drain(lock);
  }
}

}  // namespace kvbm::detail
