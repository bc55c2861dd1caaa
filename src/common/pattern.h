// Deterministic test patterns, shared by the tests, `kvbm demo` and `kvbm bench` to
// check every byte that moved. Byte i of pattern `seed` depends only on (seed, i), so a
// sub-range can be checked at its own offset.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvbm::detail {

void fill_pattern(void* dst, size_t size, uint64_t seed, size_t offset = 0);
// Index of the first byte that differs from the pattern, or SIZE_MAX when all match.
size_t find_pattern_mismatch(const void* src, size_t size, uint64_t seed, size_t offset = 0);

}  // namespace kvbm::detail
