#include "transfer/file_worker.h"

#include <map>

namespace kvbm::detail {

Result<std::unique_ptr<FileWorker>> FileWorker::create(unsigned queue_depth) {
  auto batch = UringBatch::create(queue_depth);
  if (!batch) return batch.error();
  return std::unique_ptr<FileWorker>(new FileWorker(std::move(*batch)));
}

FileWorker::FileWorker(std::unique_ptr<UringBatch> batch)
    : batch_(std::move(batch)), thread_([this] { run(); }) {}

FileWorker::~FileWorker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<FileJob> FileWorker::submit(std::vector<FileOp> ops) {
  auto job = std::make_shared<FileJob>(std::move(ops));
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(job);
  }
  cv_.notify_one();
  return job;
}

// Each job is a group of the ring: jobs queued while others run join the same io_uring
// queue, and each finishes as soon as its own ops have.
void FileWorker::run() {
  std::map<uint64_t, std::shared_ptr<FileJob>> running;
  uint64_t next_group = 0;
  for (;;) {
    std::deque<std::shared_ptr<FileJob>> fresh;
    {
      std::unique_lock lock(mu_);
      if (running.empty()) cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (running.empty() && jobs_.empty()) return;  // stopping, and all done
      fresh.swap(jobs_);
    }
    for (auto& job : fresh) {
      const uint64_t id = next_group++;
      if (Status st = batch_->add(id, job->ops_); !st) {
        job->finish(std::move(st));
        continue;
      }
      running.emplace(id, std::move(job));
    }
    if (running.empty()) continue;
    for (auto& f : batch_->progress(true)) {
      auto it = running.find(f.group);
      it->second->finish(std::move(f.status));
      running.erase(it);
    }
  }
}

}  // namespace kvbm::detail
