// The pool's internals: the frequency filter in front of the disk tier (counts, decay,
// capacity; time is given, never waited for) and the hash index (against std::unordered_map).
#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

#include "pool/frequency_filter.h"
#include "pool/hash_index.h"

namespace kvbm::detail {
namespace {

using std::chrono::milliseconds;
using T = FrequencyFilter::Clock::time_point;

TEST(FrequencyFilter, PassesAfterMinHits) {
  const T t0{};
  FrequencyFilter f(3, milliseconds(1000), 100, t0);
  EXPECT_EQ(f.hit(7, t0), 1u);
  EXPECT_FALSE(f.passes(7, t0));
  EXPECT_EQ(f.hit(7, t0), 2u);
  EXPECT_EQ(f.hit(7, t0), 3u);
  EXPECT_TRUE(f.passes(7, t0));
  EXPECT_EQ(f.count(8, t0), 0u);
}

TEST(FrequencyFilter, CountsHalveEveryPeriod) {
  const T t0{};
  FrequencyFilter f(2, milliseconds(1000), 100, t0);
  for (int i = 0; i < 8; ++i) f.hit(1, t0);
  f.hit(2, t0);
  EXPECT_EQ(f.count(1, t0 + milliseconds(999)), 8u);
  EXPECT_EQ(f.count(1, t0 + milliseconds(1000)), 4u);
  EXPECT_EQ(f.count(2, t0 + milliseconds(1000)), 0u);  // 1 halves to 0: forgotten
  EXPECT_EQ(f.tracked(), 1u);
  EXPECT_EQ(f.count(1, t0 + milliseconds(3500)), 1u);  // two more periods
  EXPECT_EQ(f.count(1, t0 + milliseconds(100000)), 0u);
  EXPECT_EQ(f.tracked(), 0u);
}

TEST(FrequencyFilter, AFullFilterDecaysBeforeTakingANewHash) {
  const T t0{};
  FrequencyFilter f(2, milliseconds(1000), 2, t0);
  f.hit(1, t0);
  f.hit(2, t0);
  f.hit(2, t0);
  // Full: hash 3 forces a decay (1 is forgotten, 2 goes to 1) and is then tracked.
  EXPECT_EQ(f.hit(3, t0), 1u);
  EXPECT_EQ(f.count(1, t0), 0u);
  EXPECT_EQ(f.count(2, t0), 1u);
  // Full with counts that survive a decay: 4 is counted for this hit only.
  f.hit(2, t0);
  f.hit(2, t0);
  f.hit(3, t0);
  f.hit(3, t0);
  EXPECT_EQ(f.hit(4, t0), 1u);
  EXPECT_EQ(f.count(4, t0), 0u);
  EXPECT_EQ(f.tracked(), 2u);
}

// Random inserts and erases over a small key space (long probe runs, wrap-around at the
// table's end), every key looked up after each step.
TEST(HashIndex, MatchesAReferenceMap) {
  constexpr size_t kCapacity = 100;
  HashIndex index(kCapacity);
  std::unordered_map<uint64_t, uint32_t> ref;
  std::mt19937_64 rng(7);
  for (int step = 0; step < 200000; ++step) {
    const uint64_t key = rng() % 300;
    if (ref.contains(key)) {
      index.erase(key);
      ref.erase(key);
    } else if (ref.size() < kCapacity) {
      const auto value = static_cast<uint32_t>(rng() % 1000);
      index.insert(key, value);
      ref[key] = value;
    }
    if (step % 97 != 0) continue;
    ASSERT_EQ(index.size(), ref.size());
    for (uint64_t k = 0; k < 300; ++k) {
      auto it = ref.find(k);
      ASSERT_EQ(index.find(k), it == ref.end() ? HashIndex::kNone : it->second)
          << "key " << k << " at step " << step;
    }
  }
  index.erase(12345);  // absent: no-op
  EXPECT_EQ(index.size(), ref.size());
}

}  // namespace
}  // namespace kvbm::detail
