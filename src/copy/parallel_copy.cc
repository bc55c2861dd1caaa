#include "copy/parallel_copy.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "copy/host_copy.h"

namespace kvbm::detail {

namespace {
// How long a helper polls for the next request before it sleeps.
constexpr std::chrono::microseconds kSpin{100};
constexpr size_t kLine = 64;  // part boundaries fall on cache lines: no line has two writers

// Copies bytes [from, to) of the spans laid end to end.
void copy_part(std::span<const CopySpan> spans, size_t from, size_t to) {
  copy_range(spans, 0, 0, from, to, [](const CopySpan& s, size_t off, size_t n) {
    std::memmove(static_cast<char*>(s.dst) + off, static_cast<const char*>(s.src) + off, n);
  });
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
      pool_.try_run(parts, [&](size_t k) { copy_part(spans, bound(k), bound(k + 1)); })) {
    return;
  }
  for (const CopySpan& s : spans) std::memmove(s.dst, s.src, s.len);
}

}  // namespace kvbm::detail
