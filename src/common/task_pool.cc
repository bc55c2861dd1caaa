#include "common/task_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kvbm::detail {

namespace {
void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}
}  // namespace

TaskPool::TaskPool(size_t threads, std::chrono::microseconds spin) : spin_(spin) {
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
  run_locked(n, fn);
}

bool TaskPool::try_run(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return true;
  std::unique_lock<std::mutex> one(run_mu_, std::try_to_lock);
  if (!one.owns_lock()) return false;
  run_locked(n, fn);
  return true;
}

void TaskPool::run_locked(size_t n, const std::function<void(size_t)>& fn) {
  std::unique_lock<std::mutex> lock(mu_);
  fn_ = &fn;
  n_ = n;
  next_ = 0;
  finished_ = 0;
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (n > 1) work_cv_.notify_all();
  drain(lock);
  if (finished_ != n_) {
    lock.unlock();
    spin_until([&] { return finished_.load(std::memory_order_relaxed) == n; });
    lock.lock();
    done_cv_.wait(lock, [&] { return finished_ == n_; });
  }
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

bool TaskPool::spin_until(const std::function<bool()>& ready) const {
  if (spin_.count() <= 0) return ready();
  const auto until = std::chrono::steady_clock::now() + spin_;
  for (unsigned i = 0;; ++i) {
    if (ready()) return true;
    // The clock is read every 64 polls: it costs more than a poll.
    if (i % 64 == 63 && std::chrono::steady_clock::now() >= until) return false;
    cpu_relax();
  }
}

void TaskPool::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (stop_) return;
    if (fn_ != nullptr && next_ < n_) {
      drain(lock);
      continue;
    }
    if (spin_.count() > 0) {
      const uint64_t seen = calls_.load(std::memory_order_relaxed);
      lock.unlock();
      const bool called = spin_until([&] {
        return calls_.load(std::memory_order_relaxed) != seen ||
               stop_.load(std::memory_order_relaxed);
      });
      lock.lock();
      if (called) continue;  // look again, under the lock
    }
    // Checked under the lock: a call that came after the spin is not missed.
    work_cv_.wait(lock, [&] { return stop_ || (fn_ != nullptr && next_ < n_); });
  }
}

}  // namespace kvbm::detail
