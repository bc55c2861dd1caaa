// The staging buffers of the chunked staging protocol (staging_wire.h): a pool of
// buffers of one size, at most `max_buffers` in use at once, handed out as Buffers that
// go back to the pool when dropped. Reused buffers are kept (up to `keep_free`); past the
// cap acquire() gives none and says so, so that the caller can queue the chunk (a READ,
// or any chunk whose bytes UCX still holds) or answer "busy" (a WRITE whose bytes are
// gone once the message callback returns). The UCX backend stages peers' file chunks in
// page-aligned host memory; the CUDA backend stages its chunks in pinned memory.
//
// Thread safety: every member may be called from any thread, and a Buffer may be
// dropped on any thread; the pool must outlive its Buffers.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::xfer::detail::staging {

class Pool;

// Gives a buffer back to its pool.
struct Return {
  Pool* pool = nullptr;
  void operator()(char* p) const;
};
using Buffer = std::unique_ptr<char, Return>;

// How a pool gets and frees its memory; alloc's error names what failed.
struct Allocator {
  std::function<Result<char*>(size_t bytes)> alloc;
  std::function<void(char*)> free;
};
// Page-aligned host memory (aligned for direct I/O).
Allocator host_allocator();

class Pool {
 public:
  Pool(size_t max_buffers, size_t buffer_bytes, size_t keep_free, Allocator allocator)
      : max_(max_buffers),
        bytes_(buffer_bytes),
        keep_free_(keep_free),
        allocator_(std::move(allocator)) {}
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Allocates the buffers kept free (at most max_buffers) now, so that acquire() never
  // allocates on a hot path; the allocator's error if one fails. Idempotent.
  Status reserve();
  // A free buffer, or null when max_buffers() are in use (then *at_cap is set, where
  // given) or an allocation failed.
  Buffer acquire(bool* at_cap = nullptr);
  size_t in_use() const;
  size_t max_buffers() const { return max_; }
  size_t buffer_bytes() const { return bytes_; }

 private:
  friend struct Return;
  void recycle(char* p);

  const size_t max_;
  const size_t bytes_;
  const size_t keep_free_;
  const Allocator allocator_;
  mutable std::mutex mu_;  // free_, in_use_
  std::vector<char*> free_;
  size_t in_use_ = 0;
};

// Starts the chunks waiting for a staging buffer, in order of arrival: each goes to
// `start(job, buffer)`, with a buffer where `needs(job)` (else a null one). At the pool's
// cap the rest wait, in order, for a buffer to come back; a job whose buffer cannot be
// allocated goes to `no_memory(job)`.
template <class Job, class Needs, class Start, class NoMemory>
void admit(std::deque<Job>& waiting, Pool& pool, Needs&& needs, Start&& start,
           NoMemory&& no_memory) {
  while (!waiting.empty()) {
    Job& j = waiting.front();
    Buffer b(nullptr, {&pool});
    if (needs(j)) {
      bool at_cap = false;
      b = pool.acquire(&at_cap);
      if (!b && at_cap) return;  // until a buffer comes back
      if (!b) {
        no_memory(std::move(j));
        waiting.pop_front();
        continue;
      }
    }
    start(std::move(j), std::move(b));
    waiting.pop_front();
  }
}

}  // namespace kvbm::xfer::detail::staging
