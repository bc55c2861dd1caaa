// Block patterns for layout and transfer tests: chunk (block, layer, outer) of pattern
// `seed` holds fill_pattern bytes of a seed derived from all four, so a chunk that lands in
// the wrong place (or not at all) is caught. Host layouts only (System, Pinned).
#pragma once

#include <span>
#include <string>

#include "kvbm/layout.h"
#include "support/test_support.h"

namespace kvbm::testing {

inline uint64_t chunk_seed(uint64_t seed, size_t block, size_t layer, size_t outer) {
  return seed * 1000003 + (block * 4096 + layer) * 2 + outer;
}

inline char* chunk_ptr(Layout& l, const MemoryRegion& m) {
  return static_cast<char*>(l.region(m.region).data()) + m.offset;
}

// Fills every chunk of the given blocks.
inline void fill_blocks(Layout& l, std::span<const size_t> ids, uint64_t seed) {
  const LayoutConfig& c = l.config();
  for (size_t b : ids)
    for (size_t layer = 0; layer < c.num_layers; ++layer)
      for (size_t o = 0; o < c.outer_dim; ++o) {
        const MemoryRegion m = l.memory_region_unchecked(b, layer, o);
        fill_pattern(chunk_ptr(l, m), m.size, chunk_seed(seed, b, layer, o));
      }
}

inline void fill_all_blocks(Layout& l, uint64_t seed) {
  std::vector<size_t> ids(l.config().num_blocks);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = i;
  fill_blocks(l, ids, seed);
}

// "" when block dst_ids[i] of `dst` holds what block src_ids[i] held under pattern `seed`;
// otherwise where the first difference is.
inline std::string check_blocks(Layout& dst, std::span<const size_t> dst_ids,
                                std::span<const size_t> src_ids, uint64_t seed) {
  const LayoutConfig& c = dst.config();
  for (size_t i = 0; i < dst_ids.size(); ++i)
    for (size_t layer = 0; layer < c.num_layers; ++layer)
      for (size_t o = 0; o < c.outer_dim; ++o) {
        const MemoryRegion m = dst.memory_region_unchecked(dst_ids[i], layer, o);
        size_t at = find_pattern_mismatch(chunk_ptr(dst, m), m.size,
                                          chunk_seed(seed, src_ids[i], layer, o));
        if (at != SIZE_MAX) {
          return "block " + std::to_string(dst_ids[i]) + " layer " + std::to_string(layer) +
                 " outer " + std::to_string(o) + " differs at byte " + std::to_string(at);
        }
      }
  return "";
}

}  // namespace kvbm::testing
