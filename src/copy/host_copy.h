// Host memory copies cut into parts (gpu_copy.h says why src/copy owns local copies). Two
// schedulers share this cut, because their callers differ: the transfer engine's
// HostPool (host_pool.h) queues a request's parts and returns at once, the request waited
// on later; the agent's ParallelCopier (parallel_copy.h) copies a request's parts on its
// caller and a few helper threads that spin between back-to-back requests, returning once
// every byte is in place. Each keeps the part sizes tuned for its caller; the copying of a
// part is this one function.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

namespace kvbm::detail {

// Copies bytes [from, to) of `spans` laid end to end: copy(span, offset, len) for each
// span's share, in order. Span `first` starts at byte `at` of the whole (at <= from; 0, 0
// to scan from the start). Returns the number of copy calls. Span has a `len` member.
template <typename Span, typename Copy>
size_t copy_range(std::span<const Span> spans, size_t first, uint64_t at, uint64_t from,
                  uint64_t to, Copy&& copy) {
  size_t calls = 0;
  for (size_t i = first; i < spans.size() && at < to; ++i) {
    const Span& s = spans[i];
    const uint64_t end = at + s.len;
    if (end > from) {
      const uint64_t lo = std::max(at, from) - at;
      copy(s, lo, std::min(end, to) - at - lo);
      ++calls;
    }
    at = end;
  }
  return calls;
}

}  // namespace kvbm::detail
