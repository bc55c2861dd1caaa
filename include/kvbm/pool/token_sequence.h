// TokenSequence: the tokens of one request, split into full blocks as they fill, with the
// hashes (kvbm/pool/hash.h) of every full block. The pool keys blocks by SequenceBlock.
//
// Ownership: a plain value (copyable, movable). Thread safety: const calls from many
// threads at once; anything else needs external synchronization.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "kvbm/pool/hash.h"
#include "kvbm/result.h"

namespace kvbm {

/// One full block of a sequence, as the pool keys it.
struct KVBM_API SequenceBlock {
  BlockHash block_hash = 0;                 ///< the hash of its tokens
  SequenceHash sequence_hash = 0;           ///< its tokens' and every earlier block's
  std::optional<SequenceHash> parent_hash;  ///< none for the first block
  /// Every field equal.
  bool operator==(const SequenceBlock&) const = default;
};

/// A request's tokens, cut into blocks of block_size with their Dynamo-compatible hashes.
/// A value type; not thread-safe.
class KVBM_API TokenSequence {
 public:
  /// InvalidArgument for a block_size of 0. The salt is hashed once (salt_hash()).
  static Result<TokenSequence> create(uint32_t block_size, std::string_view salt = {});
  /// The same with a salt hash computed already.
  static Result<TokenSequence> with_salt_hash(uint32_t block_size, SaltHash salt);

  /// Appends tokens; every block that fills is committed (its hashes computed) at once.
  /// Returns the number of blocks committed by this call.
  ///@{
  size_t append(Token token);
  size_t extend(std::span<const Token> tokens);
  ///@}
  /// Keeps the first num_tokens tokens; blocks past them are uncommitted (a block cut into
  /// becomes the tail again). InvalidArgument when num_tokens exceeds size().
  Status truncate(size_t num_tokens);

  /// Tokens per block.
  uint32_t block_size() const { return block_size_; }
  /// The salt's hash.
  SaltHash salt() const { return salt_; }
  /// Tokens appended.
  size_t size() const { return tokens_.size(); }
  /// Full blocks.
  size_t num_blocks() const { return sequence_hashes_.size(); }
  /// Every token.
  std::span<const Token> tokens() const { return tokens_; }
  /// The tokens past the last full block (fewer than block_size).
  std::span<const Token> tail() const;
  /// Each full block's hash of its own tokens.
  std::span<const BlockHash> block_hashes() const { return block_hashes_; }
  /// Each full block's sequence hash (what pools key blocks by).
  std::span<const SequenceHash> sequence_hashes() const { return sequence_hashes_; }
  /// Full block i (i < num_blocks(); OutOfBounds naming i otherwise).
  Result<SequenceBlock> block(size_t i) const;

 private:
  TokenSequence(uint32_t block_size, SaltHash salt) : block_size_(block_size), salt_(salt) {}
  void commit_full_blocks();

  uint32_t block_size_;
  SaltHash salt_;
  std::vector<Token> tokens_;
  std::vector<BlockHash> block_hashes_;
  std::vector<SequenceHash> sequence_hashes_;
};

}  // namespace kvbm
