#include "kvbm/pool/hash.h"

// The whole of XXH3 inline, from the header: no libxxhash at run time.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <bit>
#include <cstring>

namespace kvbm {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the hashes are defined over little-endian bytes");

}  // namespace

SaltHash salt_hash(std::string_view salt) {
  if (salt.empty()) return 0;
  return XXH3_64bits_withSeed(salt.data(), salt.size(), 0);
}

BlockHash block_hash(std::span<const Token> tokens, SaltHash salt) {
  // On a little-endian machine the tokens' memory already is the little-endian byte form.
  return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), salt);
}

SequenceHash sequence_hash(SequenceHash parent, BlockHash block, SaltHash salt) {
  unsigned char bytes[16];
  std::memcpy(bytes, &parent, 8);
  std::memcpy(bytes + 8, &block, 8);
  return XXH3_64bits_withSeed(bytes, sizeof(bytes), salt);
}

}  // namespace kvbm
