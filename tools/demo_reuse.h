// `kvbm demo`'s prefix-reuse act, through the block manager (kvbm/pool.h).
#pragma once

#include <filesystem>
#include <ostream>

namespace kvbm::tools::demo {

// Request A fills blocks and finishes; pressure evicts them from G1 (and later from G2);
// request B, sharing most of A's prefix, matches them on G2 (then on G3), onboards them
// and checks every byte. Prints a table of blocks matched per tier and onboard times;
// returns false when a step failed or a block came back wrong. G3's file goes in `dir`.
bool prefix_reuse_act(const std::filesystem::path& dir, std::ostream& out);

}  // namespace kvbm::tools::demo
