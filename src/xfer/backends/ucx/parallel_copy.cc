#include "xfer/backends/ucx/parallel_copy.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace kvbm::xfer::detail {

namespace {
// How long a helper polls for the next request before it sleeps.
constexpr std::chrono::microseconds kSpin{100};
constexpr size_t kLine = 64;  // part boundaries fall on cache lines: no line has two writers

// Copies bytes [from, to) of the spans laid end to end.
void copy_range(std::span<const CopySpan> spans, size_t from, size_t to) {
  size_t at = 0;
  for (const CopySpan& s : spans) {
    const size_t end = at + s.len;
    if (end > from && at < to) {
      const size_t lo = std::max(at, from) - at;
      const size_t hi = std::min(end, to) - at;
      std::memmove(static_cast<char*>(s.dst) + lo, static_cast<const char*>(s.src) + lo, hi - lo);
    }
    if (end >= to) return;
    at = end;
  }
}
}  // namespace

ParallelCopier::ParallelCopier(size_t threads) : pool_(threads, kSpin) {}

size_t ParallelCopier::default_threads() {
  return std::min<size_t>(3, std::thread::hardware_concurrency() / 4);
}

void ParallelCopier::copy(std::span<const CopySpan> spans) {
  size_t total = 0;
  for (const CopySpan& s : spans) total += s.len;
  const size_t parts = std::min(pool_.threads() + 1, std::max<size_t>(total / kMinPartBytes, 1));
  auto bound = [&](size_t k) { return k == parts ? total : total / parts * k / kLine * kLine; };
  if (total >= kMinParallelBytes && parts > 1 &&
      pool_.try_run(parts, [&](size_t k) { copy_range(spans, bound(k), bound(k + 1)); })) {
    return;
  }
  for (const CopySpan& s : spans) std::memmove(s.dst, s.src, s.len);
}

}  // namespace kvbm::xfer::detail
