#include "copy/host_pool.h"

#include <algorithm>
#include <cstring>

#include "copy/host_copy.h"
#include "copy/stream_copy.h"

namespace kvbm::detail {
namespace {
constexpr uint64_t kMinPartBytes = 64 << 10;
constexpr uint64_t kPartBytes = 1 << 20;
constexpr uint64_t kMaxParts = 4096;

// A chunk list and where each chunk starts within the job's bytes.
struct ChunkList {
  std::vector<Chunk> chunks;
  std::vector<uint64_t> starts;
  uint64_t bytes;
  size_t parts;
  bool stream;  // streaming stores

  // Copies part `part` of `parts` equal byte ranges (cutting through chunks).
  size_t copy(size_t part) const {
    const uint64_t begin = bytes * part / parts;
    const uint64_t end = bytes * (part + 1) / parts;
    // The chunk holding byte `begin`: the last one starting at or before it.
    const size_t i = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    const size_t copied =
        copy_range(std::span<const Chunk>(chunks), i, i < starts.size() ? starts[i] : 0, begin, end,
                   [&](const Chunk& c, uint64_t off, uint64_t n) {
                     HostPool::copy_bytes(c.dst + off, c.src + off, n, stream);
                   });
    if (stream) stream_fence();  // the stores are visible before the job reports done
    return copied;
  }
};
}  // namespace

void HostPool::copy_bytes(uint64_t dst, uint64_t src, uint64_t n, bool stream) {
  if (stream) {
    stream_copy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
  } else {
    std::memcpy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
  }
}

HostJob::HostJob(size_t parts, std::function<size_t(size_t)> copy)
    : copy_(std::move(copy)), parts_(parts), remaining_(parts) {}

void HostJob::run_part(size_t part) {
  chunks_.fetch_add(copy_(part), std::memory_order_relaxed);
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

// One part per thread at least (none under 64 KiB), and parts of about 1 MiB for large
// jobs: the threads take them in turn, so one that runs late (a busy core, a vCPU the host
// took away) holds the job up by a part, not by its whole share.
size_t HostPool::parts_for(uint64_t bytes) const {
  const uint64_t per_thread = std::min<uint64_t>(workers_.size(), bytes / kMinPartBytes);
  return std::clamp<uint64_t>(bytes / kPartBytes, std::max<uint64_t>(1, per_thread), kMaxParts);
}

std::shared_ptr<HostJob> HostPool::submit(std::vector<Chunk> chunks, uint64_t bytes,
                                          bool streaming_stores) {
  auto list = std::make_shared<ChunkList>();
  list->starts.reserve(chunks.size());
  uint64_t at = 0;
  for (const Chunk& c : chunks) {
    list->starts.push_back(at);
    at += c.len;
  }
  list->chunks = std::move(chunks);
  list->bytes = bytes;
  list->parts = parts_for(bytes);
  list->stream = streaming_stores || bytes >= kStreamJobBytes;
  return start(
      std::make_shared<HostJob>(list->parts, [list](size_t part) { return list->copy(part); }));
}

std::shared_ptr<HostJob> HostPool::submit_parts(size_t parts, std::function<size_t(size_t)> copy) {
  return start(std::make_shared<HostJob>(parts, std::move(copy)));
}

std::shared_ptr<HostJob> HostPool::start(std::shared_ptr<HostJob> job) {
  const size_t parts = job->parts();
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
