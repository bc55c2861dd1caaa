#include <gtest/gtest.h>

#include <string>

#include "kvbm/result.h"

namespace kvbm {
namespace {

Result<int> half(int x) {
  if (x % 2 != 0) return err(ErrorCode::InvalidArgument, "odd value ", x);
  return x / 2;
}

Status quarter_is_even(int x) {
  auto h = half(x);
  KVBM_TRY(h);
  KVBM_TRY(half(*h));
  return {};
}

TEST(Result, HoldsValueOrError) {
  auto ok = half(8);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4);

  auto bad = half(7);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(bad.error().message, "odd value 7");
  EXPECT_EQ(bad.error().to_string(), "InvalidArgument: odd value 7");
}

TEST(Result, ValueOrGivesTheFallbackOnlyForAnError) {
  EXPECT_EQ(half(8).value_or(-1), 4);
  EXPECT_EQ(half(7).value_or(-1), -1);
  Result<std::string> text = std::string("kept");
  EXPECT_EQ(text.value_or("fallback"), "kept");
  EXPECT_EQ(std::move(text).value_or("fallback"), "kept");
  Result<std::string> none = err(ErrorCode::NotFound, "no text");
  EXPECT_EQ(none.value_or("fallback"), "fallback");
}

TEST(Result, TryPropagatesFirstError) {
  EXPECT_TRUE(quarter_is_even(8).ok());
  auto st = quarter_is_even(6);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message, "odd value 3");
}

TEST(Result, ErrMessageFormatsNumbersAndStrings) {
  Error e = err(ErrorCode::OutOfBounds, "offset ", size_t{4096}, " + size ", 8192u, " in '",
                std::string("x"), "'");
  EXPECT_EQ(e.message, "offset 4096 + size 8192 in 'x'");
}

TEST(Result, EveryCodeHasAName) {
  for (int c = 0; c <= static_cast<int>(ErrorCode::Internal); ++c) {
    EXPECT_NE(to_string(static_cast<ErrorCode>(c)), "Unknown");
  }
}

TEST(ResultDeathTest, ValueOfErrorAbortsWithMessage) {
  auto bad = half(3);
  EXPECT_DEATH((void)bad.value(), "odd value 3");
}

}  // namespace
}  // namespace kvbm
