// The agent's host copies (host_copy.h: why two schedulers), for the UCX backend's
// same-host path (backends/ucx/same_host.h): a request's bytes, when there are many, cut
// into parts that a few threads copy at once: one core falls well short of the memory
// bandwidth on large copies, a few threads reach it (figures: BENCHMARKS.md, "Figures
// behind the code"). Thread safety: copy() may be called from any thread. While one call
// has the helper threads, another copies alone on its own thread rather than wait for them.
#pragma once

#include <cstddef>
#include <span>

#include "common/task_pool.h"

namespace kvbm::detail {

struct CopySpan {
  void* dst;
  const void* src;
  size_t len;
};

class ParallelCopier {
 public:
  // Requests smaller than this are copied by the caller alone: the parts would not repay
  // the hand-off.
  static constexpr size_t kMinParallelBytes = 256 << 10;
  // Parts are at least this large (so at most total / kMinPartBytes of them).
  static constexpr size_t kMinPartBytes = 128 << 10;

  // `threads` helper threads, which spin for a while after each request (task_pool.h) so
  // that back-to-back requests find them awake; 0: every copy on the caller's thread.
  explicit ParallelCopier(size_t threads);
  // A quarter of the cores, at most 3 (0 on a machine of fewer than 8 cores).
  static size_t default_threads();

  // memmoves every span, src to dst, and returns once every byte is in place.
  void copy(std::span<const CopySpan> spans);

 private:
  TaskPool pool_;
};

}  // namespace kvbm::detail
