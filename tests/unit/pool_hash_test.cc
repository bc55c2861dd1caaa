// Token hashes (Dynamo's published constants) and TokenSequence.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "kvbm/pool/hash.h"
#include "kvbm/pool/token_sequence.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

// Dynamo's tokens tests: salt hash 1337, block size 4, tokens 1..12.
TEST(PoolHash, ReproducesDynamoConstants) {
  constexpr SaltHash kSeed = 1337;
  const std::vector<Token> b1{1, 2, 3, 4}, b2{5, 6, 7, 8}, b3{9, 10, 11, 12};
  EXPECT_EQ(block_hash(b1, kSeed), 14643705804678351452ull);
  EXPECT_EQ(block_hash(b2, kSeed), 16777012769546811212ull);
  EXPECT_EQ(block_hash(b3, kSeed), 483935686894639516ull);
  const SequenceHash s1 = block_hash(b1, kSeed);
  const SequenceHash s2 = sequence_hash(s1, block_hash(b2, kSeed), kSeed);
  EXPECT_EQ(s2, 4945711292740353085ull);
  EXPECT_EQ(sequence_hash(s2, block_hash(b3, kSeed), kSeed), 12583592247330656132ull);

  auto seq = TokenSequence::with_salt_hash(4, kSeed);
  ASSERT_TRUE(seq);
  std::vector<Token> tokens(12);
  std::iota(tokens.begin(), tokens.end(), 1u);
  EXPECT_EQ(seq->extend(tokens), 3u);
  EXPECT_EQ(std::vector<SequenceHash>(seq->sequence_hashes().begin(), seq->sequence_hashes().end()),
            (std::vector<SequenceHash>{14643705804678351452ull, 4945711292740353085ull,
                                       12583592247330656132ull}));
}

TEST(PoolHash, SaltHashIsZeroWithoutSaltAndSeedsTheBlockHash) {
  EXPECT_EQ(salt_hash(""), 0u);
  EXPECT_NE(salt_hash("tenant-a"), 0u);
  EXPECT_NE(salt_hash("tenant-a"), salt_hash("tenant-b"));
  const std::vector<Token> b{1, 2, 3, 4};
  EXPECT_NE(block_hash(b, salt_hash("tenant-a")), block_hash(b, salt_hash("tenant-b")));
  auto a = TokenSequence::create(4, "tenant-a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->salt(), salt_hash("tenant-a"));
}

// Changing one token of block k changes the sequence hashes of blocks k.. (and the block
// hash of k only) and leaves blocks 0..k-1 alone.
TEST(PoolHash, ChangingBlockKChangesHashesFromKOn) {
  constexpr uint32_t kBlock = 16;
  constexpr size_t kBlocks = 8;
  std::vector<Token> tokens(kBlock * kBlocks + 5);
  std::iota(tokens.begin(), tokens.end(), 100u);
  auto base = TokenSequence::create(kBlock, "p");
  ASSERT_TRUE(base);
  base->extend(tokens);
  ASSERT_EQ(base->num_blocks(), kBlocks);
  for (size_t k = 0; k < kBlocks; ++k) {
    for (size_t pos : {size_t{0}, size_t{kBlock / 2}, size_t{kBlock - 1}}) {
      auto changed = tokens;
      changed[k * kBlock + pos] ^= 0x5a5a;
      auto seq = TokenSequence::create(kBlock, "p");
      ASSERT_TRUE(seq);
      seq->extend(changed);
      for (size_t i = 0; i < kBlocks; ++i) {
        EXPECT_EQ(seq->sequence_hashes()[i] == base->sequence_hashes()[i], i < k)
            << "block " << i << " after changing block " << k;
        EXPECT_EQ(seq->block_hashes()[i] == base->block_hashes()[i], i != k)
            << "block " << i << " after changing block " << k;
      }
    }
  }
}

TEST(TokenSequence, CommitsBlocksAsTheyFill) {
  auto seq = TokenSequence::create(4);
  ASSERT_TRUE(seq);
  for (Token t = 1; t <= 3; ++t) EXPECT_EQ(seq->append(t), 0u);
  EXPECT_EQ(seq->num_blocks(), 0u);
  EXPECT_EQ(seq->tail().size(), 3u);
  EXPECT_EQ(seq->append(4), 1u);
  EXPECT_EQ(seq->num_blocks(), 1u);
  EXPECT_TRUE(seq->tail().empty());
  const std::vector<Token> more{5, 6, 7, 8, 9, 10, 11, 12, 13};
  EXPECT_EQ(seq->extend(more), 2u);
  EXPECT_EQ(seq->size(), 13u);
  EXPECT_EQ(seq->tail().size(), 1u);
  EXPECT_EQ(seq->tail()[0], 13u);

  auto b0 = seq->block(0);
  auto b2 = seq->block(2);
  ASSERT_TRUE(b0 && b2);
  EXPECT_FALSE(b0->parent_hash.has_value());
  EXPECT_EQ(b0->sequence_hash, b0->block_hash);
  EXPECT_EQ(b2->parent_hash, seq->sequence_hashes()[1]);
  EXPECT_EQ(b2->sequence_hash, sequence_hash(*b2->parent_hash, b2->block_hash, 0));
  EXPECT_ERROR(seq->block(3), ErrorCode::OutOfBounds, "block 3 is not a full block");
}

TEST(TokenSequence, TruncateUncommitsBlocksAndRecommitsTheSame) {
  auto seq = TokenSequence::create(4);
  ASSERT_TRUE(seq);
  std::vector<Token> tokens(14);
  std::iota(tokens.begin(), tokens.end(), 7u);
  seq->extend(tokens);
  const std::vector<SequenceHash> before(seq->sequence_hashes().begin(),
                                         seq->sequence_hashes().end());
  ASSERT_TRUE(seq->truncate(9));
  EXPECT_EQ(seq->num_blocks(), 2u);
  EXPECT_EQ(seq->tail().size(), 1u);
  ASSERT_TRUE(seq->truncate(8));
  EXPECT_EQ(seq->num_blocks(), 2u);
  ASSERT_TRUE(seq->truncate(7));
  EXPECT_EQ(seq->num_blocks(), 1u);
  seq->extend(std::span<const Token>(tokens).subspan(7));
  EXPECT_EQ(std::vector<SequenceHash>(seq->sequence_hashes().begin(), seq->sequence_hashes().end()),
            before);
  EXPECT_ERROR(seq->truncate(15), ErrorCode::InvalidArgument,
               "cannot truncate to 15 tokens: the sequence has 14");
  EXPECT_ERROR(TokenSequence::create(0), ErrorCode::InvalidArgument, "block_size must be > 0");
}

}  // namespace
}  // namespace kvbm
