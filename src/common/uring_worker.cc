#include "common/uring_worker.h"

#include <utility>
#include <vector>

namespace kvbm::detail {

Result<std::unique_ptr<UringWorker>> UringWorker::create(unsigned queue_depth) {
  auto batch = UringBatch::create(queue_depth);
  if (!batch) return batch.error();
  return std::unique_ptr<UringWorker>(new UringWorker(std::move(*batch)));
}

UringWorker::UringWorker(std::unique_ptr<UringBatch> batch)
    : batch_(std::move(batch)), thread_([this] { run(); }) {}

UringWorker::~UringWorker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

uint64_t UringWorker::submit(std::span<const FileOp> ops, Done done) {
  uint64_t ticket;
  {
    std::lock_guard lock(mu_);
    ticket = next_ticket_++;
    queue_.push_back({ticket, ops, std::move(done)});
  }
  work_cv_.notify_one();
  return ticket;
}

void UringWorker::cancel(uint64_t ticket) {
  std::unique_lock lock(mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->ticket == ticket) {
      queue_.erase(it);
      return;
    }
  }
  done_cv_.wait(lock, [&] { return !running_.contains(ticket); });
}

void UringWorker::run() {
  std::vector<Pending> fresh;
  std::vector<UringBatch::Finished> ended;
  std::unique_lock lock(mu_);
  for (;;) {
    if (running_.empty() && queue_.empty()) {
      if (stop_) return;  // every group submitted has ended
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      continue;
    }
    for (Pending& p : queue_) {
      running_.emplace(p.ticket, std::move(p.done));
      fresh.push_back(std::move(p));
    }
    queue_.clear();
    lock.unlock();
    // running_ changes only on this thread, so reading it unlocked is safe.
    for (const Pending& p : fresh) {
      // A group the ring refuses up front (a closed fd, say) ends with that error.
      if (Status st = batch_->add(p.ticket, p.ops); !st) ended.push_back({p.ticket, std::move(st)});
    }
    fresh.clear();
    // Waits in the kernel only when nothing ended above: groups queued meanwhile join at
    // the next completion.
    for (auto& f : batch_->progress(ended.empty())) ended.push_back(std::move(f));
    for (auto& f : ended) running_.at(f.group)(std::move(f.status));
    lock.lock();
    if (ended.empty()) continue;
    for (const auto& f : ended) running_.erase(f.group);
    ended.clear();
    done_cv_.notify_all();
  }
}

}  // namespace kvbm::detail
