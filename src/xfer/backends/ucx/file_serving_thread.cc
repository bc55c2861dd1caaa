#include "xfer/backends/ucx/file_serving_thread.h"

#include <utility>

namespace kvbm::xfer::detail {

void FileServingThread::submit(std::vector<FileJob>& jobs) {
  if (jobs.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      for (FileJob& j : jobs) queue_.push_back(std::move(j));
      // Most agents never serve a file: no thread until one does.
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    }
  }
  jobs.clear();  // dropped after stop(): their staging goes back to the server
  cv_.notify_one();
}

std::vector<FileJob> FileServingThread::take_done() {
  // Called on every progress() pass, often by a thread spinning on it: without the flag
  // it took the lock the serving thread needs to hand its batch over, each time.
  if (!has_done_.load(std::memory_order_acquire)) return {};
  std::lock_guard<std::mutex> lock(mu_);
  has_done_.store(false, std::memory_order_relaxed);
  return std::exchange(done_, {});
}

void FileServingThread::stop() {
  std::vector<FileJob> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    dropped = std::exchange(queue_, {});
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  done_.clear();
}

void FileServingThread::loop() {
  std::vector<FileJob> batch;
  std::vector<FileServer::Io> ios;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      batch.swap(queue_);  // every job queued now: one io_uring submission
    }
    ios.clear();
    for (const FileJob& j : batch) {
      ios.push_back({j.h.op, j.h.fd, j.h.offset, j.h.len, j.data.get(), {}});
    }
    server_.serve(ios);
    for (size_t i = 0; i < batch.size(); ++i) batch[i].status = std::move(ios[i].status);
    std::lock_guard<std::mutex> lock(mu_);
    for (FileJob& j : batch) done_.push_back(std::move(j));
    has_done_.store(true, std::memory_order_release);
    batch.clear();
  }
}

}  // namespace kvbm::xfer::detail
