// One contiguous range to copy, the unit every local copy of src/copy works on (gpu_copy.h
// says why the module exists).
#pragma once

#include <cstdint>

namespace kvbm {

// Absolute addresses (file offsets for a file side) and the index of the region each side
// lies in (so a file's chunks know their fd).
struct Chunk {
  uint64_t src = 0;
  uint64_t dst = 0;
  uint64_t len = 0;
  uint32_t src_region = 0;
  uint32_t dst_region = 0;
};

}  // namespace kvbm
