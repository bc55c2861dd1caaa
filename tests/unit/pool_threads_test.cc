// Two threads hammering one BlockManager (allocate, register, match, onboard, drop) while
// its offload thread copies: no error but running out of space, and nothing leaks. Built
// for the TSan run (label unit-tsan); a fixed number of operations, never a duration.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "kvbm/pool.h"

namespace kvbm {
namespace {

constexpr size_t kOps = 30000;  // per thread

void hammer(BlockManager& m, const TokenSequence& seq, uint64_t seed, size_t& failures) {
  std::mt19937_64 rng(seed);
  std::vector<ImmutableBlock> held;
  const auto hashes = seq.sequence_hashes();
  for (size_t op = 0; op < kOps; ++op) {
    const unsigned dice = rng() % 10;
    if (dice < 4) {
      const size_t k = rng() % seq.num_blocks();
      auto b = m.allocate(1);
      if (!b) continue;  // all held: fine
      if (!(*b)[0].begin_fill() || !(*b)[0].complete(*seq.block(k))) ++failures;
      auto r = m.register_block((*b)[0], static_cast<uint32_t>(rng() % 2));
      if (!r) {
        ++failures;
        continue;
      }
      if (held.size() < 6) held.push_back(std::move(*r));
    } else if (dice < 7) {
      const size_t start = rng() % 4;
      MatchResult match = m.match(hashes.subspan(start, 1 + rng() % (hashes.size() - start)));
      if (dice == 6 && match.g2.size() + match.g3.size() > 0) {
        auto on = m.onboard(match);
        if (on && on->error) ++failures;  // host and disk copies do not fail here
      }
    } else if (!held.empty()) {
      held.erase(held.begin() + static_cast<ptrdiff_t>(rng() % held.size()));
    }
  }
}

TEST(PoolThreads, TwoThreadsHammerOneManager) {
  BlockManagerConfig config;
  config.block = LayoutConfig{.num_blocks = 0,
                              .num_layers = 1,
                              .outer_dim = 2,
                              .page_size = 4,
                              .inner_dim = 512,
                              .dtype_bytes = 2,
                              .alignment = 4096};
  config.g1_blocks = 24;
  config.g2_blocks = 16;
  config.g3_blocks = 32;
  config.use_gpu = false;
  config.offload.disk_min_hits = 2;
  config.offload.queue_capacity = 64;
  config.offload.max_batch = 8;
  config.engine.host_threads = 2;
  auto made = BlockManager::create(config);
  ASSERT_TRUE(made) << made.error().to_string();
  BlockManager& m = **made;
  auto seq = TokenSequence::create(4);
  ASSERT_TRUE(seq);
  for (Token t = 0; t < 40 * 4; ++t) seq->append(t * 7 + 1);

  size_t failures[2] = {0, 0};
  std::thread a([&] { hammer(m, *seq, 1, failures[0]); });
  std::thread b([&] { hammer(m, *seq, 2, failures[1]); });
  a.join();
  b.join();
  EXPECT_EQ(failures[0] + failures[1], 0u);
  ASSERT_TRUE(m.flush());
  const BlockManagerCounters c = m.counters();
  EXPECT_GT(c.g1_to_g2.blocks, 0u);
  EXPECT_GT(c.lookups, 0u);
  for (size_t t = 0; t < kNumTiers; ++t) {
    const PoolCounters& p = c.tiers[t].pool;
    EXPECT_EQ(p.active_blocks, 0u) << to_string(static_cast<Tier>(t));
    EXPECT_EQ(p.free_blocks + p.inactive_blocks, p.total_blocks);
    EXPECT_EQ(p.inactive_blocks, p.registered_blocks);
    EXPECT_EQ(p.stored - p.removed, p.registered_blocks);
  }
}

}  // namespace
}  // namespace kvbm
