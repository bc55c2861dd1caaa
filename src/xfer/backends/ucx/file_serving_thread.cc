#include "xfer/backends/ucx/file_serving_thread.h"

#include <map>
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
  // Jobs stream through the server's ring: each starts as it arrives (while others run)
  // and comes back as it ends, so the disk never idles between batches.
  std::map<uint64_t, FileJob> running;  // by a local id
  uint64_t next = 0;
  std::vector<FileJob> fresh, done;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (running.empty()) cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_ && running.empty()) return;
      if (!stopping_) fresh.swap(queue_);  // after stop(), only what runs is finished
    }
    for (FileJob& j : fresh) {
      const uint64_t id = next++;
      const FileServer::Io io{j.h.op, j.h.fd, j.h.offset, j.h.len, j.data.get()};
      if (Status st = server_.start(id, io); !st) {
        j.status = std::move(st);
        done.push_back(std::move(j));
      } else {
        running.emplace(id, std::move(j));
      }
    }
    fresh.clear();
    // Waits in the kernel for an I/O to end only when no job is done to hand back: jobs
    // that arrive meanwhile start at the next completion.
    for (auto& [id, st] : server_.finished(done.empty())) {
      auto it = running.find(id);
      if (it == running.end()) continue;
      it->second.status = std::move(st);
      done.push_back(std::move(it->second));
      running.erase(it);
    }
    if (done.empty()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      for (FileJob& j : done) done_.push_back(std::move(j));
      has_done_.store(true, std::memory_order_release);
    }
    done.clear();  // after stop(): dropped, their staging back to the server
  }
}

}  // namespace kvbm::xfer::detail
