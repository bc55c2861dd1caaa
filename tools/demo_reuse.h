// `kvbm demo`'s prefix-reuse act, through the block manager (kvbm/pool.h).
#pragma once

#include <filesystem>
#include <ostream>

#include "report.h"

namespace kvbm::tools::demo {

// Request A fills blocks and finishes; pressure evicts them from G1 (and later from G2);
// request B, sharing most of A's prefix, matches them on G2 (then on G3), onboards them
// and checks every byte. Prints a table of blocks matched per tier and onboard times (and,
// when `rows` is given, adds them there as JSON); returns false when a step failed or a
// block came back wrong (the error is then a row of its own). G3's file goes in `dir`.
bool prefix_reuse_act(const std::filesystem::path& dir, std::ostream& out, Json* rows = nullptr);

}  // namespace kvbm::tools::demo
