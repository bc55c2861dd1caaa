// What `kvbm demo` and its peer process (`kvbm demo-peer`) share: the shape of the KV
// blocks, the pattern each block carries, a check that reads a layout on any tier, and the
// hex form in which the peer's serialized layout crosses the pipe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "kvbm/layout.h"
#include "kvbm/result.h"

namespace kvbm::tools::demo {

// One block: 2 layers x K/V x 16 tokens x 2048 (16 KV heads x 128) x 2-byte dtype, so each
// (layer, K|V) chunk is 64 KiB and a block is 256 KiB. Strides aligned to 4096 (O_DIRECT).
LayoutConfig block_config(size_t num_blocks);
size_t block_bytes();

// The peer's (and the host -> host copy's) destination of block i out of n: reversed, so
// no two blocks are adjacent on both sides and every block moves as its own chunks.
inline size_t reversed(size_t n, size_t i) {
  return n - 1 - i;
}

// Chunk (block, layer, outer) of pattern `seed` holds detail::fill_pattern bytes of a seed
// derived from all four: a chunk that lands in the wrong place is caught.
uint64_t chunk_seed(uint64_t seed, size_t block, size_t layer, size_t outer);

// Fills every chunk of a host layout (System or Pinned). InvalidArgument for other tiers.
Status fill_blocks(Layout& host, uint64_t seed);

// Checks that every block b of `layout` holds the pattern of block src_of(b): "ok", or
// "CORRUPT block N (layer L, K|V, byte B)" for the first bad chunk found. Host regions are
// read in place, Disk regions with pread, Device regions with cudaMemcpy. An error when a
// region cannot be read.
Result<std::string> check_blocks(const Layout& layout, uint64_t seed,
                                 const std::function<size_t(size_t)>& src_of);

// Device regions: whole-region copies and zeroing for setup and checks, outside the
// transfer engine. DeviceUnavailable in a build without CUDA.
Status copy_to_device(Storage& device, const void* host);
Status zero_region(Storage& region);

std::string to_hex(std::string_view bytes);
std::optional<std::string> from_hex(std::string_view hex);

}  // namespace kvbm::tools::demo
