#include "common/pattern.h"

#include <cstring>

#include "common/sanitizers.h"

namespace kvbm::detail {
namespace {

// One 64-bit word of the pattern; byte i is byte (i % 8) of word i / 8.
inline uint64_t pattern_word(uint64_t seed, uint64_t index) {
  uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (index + 1) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 29);
}

inline uint8_t pattern_byte(uint64_t seed, size_t i) {
  return static_cast<uint8_t>(pattern_word(seed, i / 8) >> ((i % 8) * 8));
}

}  // namespace

// Not instrumented under ThreadSanitizer: a fill comes before any transfer that reads it,
// and TSan's first touch of the shadow of every filled byte made the fill several times
// slower than the test it prepares. The check (find_pattern_mismatch) stays instrumented:
// it reads what other threads wrote, which is where a missing synchronization shows.

KVBM_NO_TSAN void fill_pattern(void* dst, size_t size, uint64_t seed, size_t offset) {
  auto* p = static_cast<uint8_t*>(dst);
  size_t i = 0;
  for (; i < size && (offset + i) % 8 != 0; ++i) p[i] = pattern_byte(seed, offset + i);
  for (; i + 8 <= size; i += 8) {  // word at a time: the pattern is filled at memory speed
    uint64_t w = pattern_word(seed, (offset + i) / 8);
    std::memcpy(p + i, &w, 8);
  }
  for (; i < size; ++i) p[i] = pattern_byte(seed, offset + i);
}

size_t find_pattern_mismatch(const void* src, size_t size, uint64_t seed, size_t offset) {
  const auto* p = static_cast<const uint8_t*>(src);
  size_t i = 0;
  for (; i < size && (offset + i) % 8 != 0; ++i) {
    if (p[i] != pattern_byte(seed, offset + i)) return i;
  }
  for (; i + 8 <= size; i += 8) {
    uint64_t w = pattern_word(seed, (offset + i) / 8), got;
    std::memcpy(&got, p + i, 8);
    if (got != w) break;
  }
  for (; i < size; ++i) {
    if (p[i] != pattern_byte(seed, offset + i)) return i;
  }
  return SIZE_MAX;
}

}  // namespace kvbm::detail
