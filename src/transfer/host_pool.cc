#include "transfer/host_pool.h"

#include <algorithm>
#include <cstring>

#include "transfer/stream_copy.h"

namespace kvbm::detail {
namespace {
constexpr uint64_t kMinPartBytes = 64 << 10;
constexpr uint64_t kPartBytes = 1 << 20;
constexpr uint64_t kMaxParts = 4096;
// Jobs at least this large outgrow the caches: their destination is written with streaming
// stores (no read for ownership), about twice the useful bandwidth of memcpy's stores.
constexpr uint64_t kStreamJobBytes = 32 << 20;
}  // namespace

HostJob::HostJob(std::vector<Chunk> chunks, uint64_t bytes, size_t parts)
    : chunks_(std::move(chunks)), bytes_(bytes), parts_(parts), remaining_(parts) {
  starts_.reserve(chunks_.size());
  uint64_t at = 0;
  for (const Chunk& c : chunks_) {
    starts_.push_back(at);
    at += c.len;
  }
}

void HostJob::run_part(size_t part) {
  const uint64_t begin = bytes_ * part / parts_;
  const uint64_t end = bytes_ * (part + 1) / parts_;
  // The chunk holding byte `begin`: the last one starting at or before it.
  size_t i = std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin() - 1;
  uint64_t at = begin;
  const bool stream = bytes_ >= kStreamJobBytes;
  while (at < end && i < chunks_.size()) {
    const Chunk& c = chunks_[i];
    const uint64_t off = at - starts_[i];
    const uint64_t n = std::min(c.len - off, end - at);
    auto* dst = reinterpret_cast<void*>(c.dst + off);
    const auto* src = reinterpret_cast<const void*>(c.src + off);
    if (stream) {
      stream_copy(dst, src, n);
    } else {
      std::memcpy(dst, src, n);
    }
    at += n;
    ++i;
  }
  if (stream) stream_fence();  // the stores are visible before the job reports done
  std::lock_guard lock(mu_);
  if (--remaining_ == 0) cv_.notify_all();
}

bool HostJob::done() const {
  std::lock_guard lock(mu_);
  return remaining_ == 0;
}

bool HostJob::wait_for(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return remaining_ == 0; });
}

HostPool::HostPool(size_t threads) {
  workers_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
}

HostPool::~HostPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

std::shared_ptr<HostJob> HostPool::submit(std::vector<Chunk> chunks, uint64_t bytes) {
  // One part per thread at least (none under 64 KiB), and parts of about 1 MiB for large
  // jobs: the threads take them in turn, so one that runs late (a busy core, a vCPU the
  // host took away) holds the job up by a part, not by its whole share.
  const uint64_t per_thread = std::min<uint64_t>(workers_.size(), bytes / kMinPartBytes);
  const size_t parts =
      std::clamp<uint64_t>(bytes / kPartBytes, std::max<uint64_t>(1, per_thread), kMaxParts);
  auto job = std::make_shared<HostJob>(std::move(chunks), bytes, parts);
  {
    std::lock_guard lock(mu_);
    for (size_t p = 0; p < parts; ++p) tasks_.emplace_back(job, p);
  }
  if (parts == 1) {
    cv_.notify_one();
  } else {
    cv_.notify_all();
  }
  return job;
}

void HostPool::run() {
  for (;;) {
    std::pair<std::shared_ptr<HostJob>, size_t> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to do
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task.first->run_part(task.second);
  }
}

}  // namespace kvbm::detail
