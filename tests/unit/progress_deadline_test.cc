// The peer-timeout rule of a request in flight (xfer/progress_deadline.h): the timeout
// counts from the last part the backend reported, never from post() alone.
#include "xfer/progress_deadline.h"

#include <gtest/gtest.h>

#include <chrono>

namespace kvbm::xfer::detail {
namespace {

using namespace std::chrono_literals;
using Clock = ProgressDeadline::Clock;

TEST(ProgressDeadline, ExpiresOneTimeoutAfterPostWithoutProgress) {
  const Clock::time_point t0{};
  ProgressDeadline d;
  d.start(t0, 100ms, 0);
  int asked = 0;
  auto none = [&] {
    ++asked;
    return uint64_t{0};
  };
  EXPECT_FALSE(d.expired(t0 + 99ms, none));
  EXPECT_EQ(asked, 0) << "the progress count is read only once the deadline is reached";
  EXPECT_TRUE(d.expired(t0 + 100ms, none));
  EXPECT_EQ(asked, 1);
}

TEST(ProgressDeadline, EachReportedPartStartsTheTimeoutAgain) {
  const Clock::time_point t0{};
  ProgressDeadline d;
  d.start(t0, 100ms, 5);
  uint64_t parts = 5;
  auto now_parts = [&] { return parts; };
  // A transfer that keeps moving lives far past one timeout...
  for (int i = 1; i <= 10; ++i) {
    ++parts;
    EXPECT_FALSE(d.expired(t0 + i * 100ms, now_parts)) << "round " << i;
  }
  // ...and fails one timeout after its last part.
  EXPECT_FALSE(d.expired(t0 + 1099ms, now_parts));
  EXPECT_TRUE(d.expired(t0 + 1100ms, now_parts));
}

TEST(ProgressDeadline, ABackendThatReportsNoPartsGetsThePlainTimeout) {
  const Clock::time_point t0{};
  ProgressDeadline d;
  d.start(t0, 50ms, 0);
  auto zero = [] { return uint64_t{0}; };
  EXPECT_FALSE(d.expired(t0 + 49ms, zero));
  EXPECT_TRUE(d.expired(t0 + 50ms, zero));
  EXPECT_TRUE(d.expired(t0 + 51ms, zero));
}

TEST(ProgressDeadline, StartingAgainForgetsTheLastPost) {
  const Clock::time_point t0{};
  ProgressDeadline d;
  d.start(t0, 100ms, 3);
  auto three = [] { return uint64_t{3}; };
  EXPECT_TRUE(d.expired(t0 + 100ms, three));
  d.start(t0 + 500ms, 100ms, 3);  // a repost
  EXPECT_FALSE(d.expired(t0 + 599ms, three));
  EXPECT_TRUE(d.expired(t0 + 600ms, three));
}

}  // namespace
}  // namespace kvbm::xfer::detail
