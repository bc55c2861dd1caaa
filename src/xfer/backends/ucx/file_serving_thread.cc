#include "xfer/backends/ucx/file_serving_thread.h"

#include <utility>

namespace kvbm::xfer::detail {

using kvbm::detail::FileOp;
using kvbm::detail::UringWorker;

// Chunks of many peers and transfers in flight at once: as many as the default staging
// cap holds (FileService::kDefaultMaxStaging), the depth at which an NVMe disk is measured
// (`kvbm bench xfer`'s disk ceiling); fewer left it short of the disk's rate.
constexpr unsigned kQueueDepth = 64;

void FileServingThread::submit(std::vector<FileJob>& jobs) {
  std::vector<FileJob> refused;
  for (FileJob& j : jobs) {
    auto pin = server_.pin(j.h.dev, j.h.addr, j.h.len);  // fstat, off our lock
    if (!pin) {
      j.status = pin.error();
      refused.push_back(std::move(j));
      continue;
    }
    const FileOp op{j.h.op == Op::Write ? FileOp::Kind::Write : FileOp::Kind::Read,
                    static_cast<int>(j.h.dev), j.h.addr, j.data.get(), j.h.len};
    auto r = std::make_unique<Running>(Running{std::move(j), op, std::move(*pin)});
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) continue;  // dropped: its staging buffer goes back to its pool
    if (!worker_) {
      // Most agents never serve a file: no thread and no ring until one does.
      auto w = UringWorker::create(kQueueDepth);
      if (!w) {
        r->job.status = w.error();
        refused.push_back(std::move(r->job));
        continue;
      }
      worker_ = std::move(*w);
    }
    const uint64_t id = next_++;
    const FileOp* at = &r->op;  // the node stays put while the map changes
    running_.emplace(id, std::move(r));
    worker_->submit({at, 1}, [this, id](Status st) { finished(id, std::move(st)); });
  }
  jobs.clear();
  if (refused.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  for (FileJob& j : refused) done_.push_back(std::move(j));
  has_done_.store(true, std::memory_order_release);
}

void FileServingThread::finished(uint64_t id, Status st) {
  std::unique_ptr<Running> r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = running_.find(id);
    r = std::move(it->second);
    running_.erase(it);
    if (!stopping_) {
      r->job.status = std::move(st);
      done_.push_back(std::move(r->job));
      has_done_.store(true, std::memory_order_release);
    }
  }
  // r goes here, off the lock: its pin lets the region go, and a dropped job's staging
  // buffer goes back to its pool.
}

std::vector<FileJob> FileServingThread::take_done() {
  // Called on every progress() pass, often by a thread spinning on it: without the flag
  // it took the lock the serving thread needs to hand its jobs over, each time.
  if (!has_done_.load(std::memory_order_acquire)) return {};
  std::lock_guard<std::mutex> lock(mu_);
  has_done_.store(false, std::memory_order_relaxed);
  return std::exchange(done_, {});
}

void FileServingThread::stop() {
  std::unique_ptr<UringWorker> worker;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    worker = std::move(worker_);
  }
  worker.reset();  // runs every job submitted to its end; finished() drops them
  std::lock_guard<std::mutex> lock(mu_);
  done_.clear();
}

}  // namespace kvbm::xfer::detail
