// Block and sequence hashes of token blocks, compatible with NVIDIA Dynamo's KVBM.
//
// Tokens are uint32_t. A sequence is split into full blocks of block_size tokens (and a
// partial tail, which has no hash). All three hashes are XXH3-64 (Debian's libxxhash):
//   SaltHash      XXH3-64 of the salt bytes, seed 0; no salt (empty): 0.
//   BlockHash     XXH3-64 of the block's tokens as little-endian u32 bytes, seed SaltHash.
//   SequenceHash  block 0: its BlockHash; block k > 0: XXH3-64 of the 16 bytes (parent
//                 SequenceHash as little-endian u64, then this BlockHash as little-endian
//                 u64), seed SaltHash. It keys a block by its whole prefix.
// Pure functions: thread-safe, no errors.
#pragma once

#include "kvbm/export.h"

#include <cstdint>
#include <span>
#include <string_view>

namespace kvbm {

using Token = uint32_t;
using SaltHash = uint64_t;
using BlockHash = uint64_t;
using SequenceHash = uint64_t;

KVBM_API SaltHash salt_hash(std::string_view salt);
KVBM_API BlockHash block_hash(std::span<const Token> tokens, SaltHash salt);
KVBM_API SequenceHash sequence_hash(SequenceHash parent, BlockHash block, SaltHash salt);

}  // namespace kvbm
