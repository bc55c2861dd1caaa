#include "kvbm/pool/token_sequence.h"

#include <algorithm>

namespace kvbm {

Result<TokenSequence> TokenSequence::create(uint32_t block_size, std::string_view salt) {
  return with_salt_hash(block_size, salt_hash(salt));
}

Result<TokenSequence> TokenSequence::with_salt_hash(uint32_t block_size, SaltHash salt) {
  if (block_size == 0) return err(ErrorCode::InvalidArgument, "block_size must be > 0");
  return TokenSequence(block_size, salt);
}

void TokenSequence::commit_full_blocks() {
  while ((sequence_hashes_.size() + 1) * block_size_ <= tokens_.size()) {
    const size_t k = sequence_hashes_.size();
    const std::span<const Token> block(tokens_.data() + k * block_size_, block_size_);
    const BlockHash h = block_hash(block, salt_);
    block_hashes_.push_back(h);
    sequence_hashes_.push_back(k == 0 ? h : sequence_hash(sequence_hashes_.back(), h, salt_));
  }
}

size_t TokenSequence::append(Token token) {
  const size_t before = num_blocks();
  tokens_.push_back(token);
  commit_full_blocks();
  return num_blocks() - before;
}

size_t TokenSequence::extend(std::span<const Token> tokens) {
  const size_t before = num_blocks();
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  commit_full_blocks();
  return num_blocks() - before;
}

Status TokenSequence::truncate(size_t num_tokens) {
  if (num_tokens > tokens_.size()) {
    return err(ErrorCode::InvalidArgument, "cannot truncate to ", num_tokens,
               " tokens: the sequence has ", tokens_.size());
  }
  tokens_.resize(num_tokens);
  const size_t blocks = num_tokens / block_size_;
  block_hashes_.resize(std::min(blocks, block_hashes_.size()));
  sequence_hashes_.resize(block_hashes_.size());
  return {};
}

std::span<const Token> TokenSequence::tail() const {
  const size_t full = num_blocks() * block_size_;
  return std::span<const Token>(tokens_).subspan(full);
}

Result<SequenceBlock> TokenSequence::block(size_t i) const {
  if (i >= num_blocks()) {
    return err(ErrorCode::OutOfBounds, "block ", i, " is not a full block: the sequence has ",
               num_blocks());
  }
  SequenceBlock b{
      .block_hash = block_hashes_[i], .sequence_hash = sequence_hashes_[i], .parent_hash = {}};
  if (i > 0) b.parent_hash = sequence_hashes_[i - 1];
  return b;
}

}  // namespace kvbm
