#include "transfer/file_worker.h"

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

void FileWorker::run() {
  for (;;) {
    std::shared_ptr<FileJob> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job->finish(batch_->run(job->ops_));
  }
}

}  // namespace kvbm::detail
