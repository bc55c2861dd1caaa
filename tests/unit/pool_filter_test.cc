// The frequency filter in front of the disk tier: counts, decay, capacity. Time is given,
// never waited for.
#include <gtest/gtest.h>

#include "pool/frequency_filter.h"

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

}  // namespace
}  // namespace kvbm::detail
