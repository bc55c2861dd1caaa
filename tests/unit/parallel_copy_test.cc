// The same-host path's copier (copy/parallel_copy.h): every span copied whole,
// nothing around it touched, alone or in parts on helper threads, and from two callers at
// once.
#include "copy/parallel_copy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace kvbm::detail {
namespace {

// Spans of `sizes` bytes, from `src` at odd offsets to `dst` at other odd offsets.
struct Case {
  std::vector<char> src, dst;
  std::vector<CopySpan> spans;
  std::vector<std::pair<size_t, size_t>> at;  // (source offset, destination offset)
  std::vector<size_t> sizes;

  Case(const std::vector<size_t>& lens, uint64_t seed) : sizes(lens) {
    size_t total = 0;
    for (size_t n : lens) total += n + 64;
    src.resize(total + 64);
    dst.assign(total + 128, 0);
    kvbm::testing::fill_pattern(src.data(), src.size(), seed);
    size_t s = 3, d = 7;  // the two sides at different alignments
    for (size_t n : lens) {
      spans.push_back({dst.data() + d, src.data() + s, n});
      at.emplace_back(s, d);
      s += n + 13;
      d += n + 29;
    }
  }
  // The first wrong byte, or "" when every span landed and every byte between is zero.
  std::string check() const {
    std::vector<char> want(dst.size(), 0);
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::memcpy(want.data() + at[i].second, src.data() + at[i].first, sizes[i]);
    }
    for (size_t b = 0; b < dst.size(); ++b) {
      if (dst[b] != want[b]) return "byte " + std::to_string(b);
    }
    return "";
  }
};

TEST(ParallelCopier, CopiesEverySpanWholeAloneOrInParts) {
  const std::vector<std::vector<size_t>> cases = {
      {},
      {1},
      {ParallelCopier::kMinParallelBytes - 1},  // below the threshold: the caller alone
      {ParallelCopier::kMinParallelBytes},      // two parts
      {(4 << 20) + 5},                          // one span cut into parts
      {1, 7, 4096, 65537, (1 << 20) + 3, 3},    // parts that end inside spans
      std::vector<size_t>(1000, 1031),          // many small spans, about 1 MiB
  };
  uint64_t seed = 1;
  for (size_t threads : {0, 1, 3}) {
    ParallelCopier copier(threads);
    for (const auto& lens : cases) {
      Case c(lens, ++seed);
      copier.copy(c.spans);
      EXPECT_EQ(c.check(), "") << threads << " threads, " << lens.size() << " spans";
    }
  }
}

TEST(ParallelCopier, TwoCallersAtOnce) {
  ParallelCopier copier(2);
  std::vector<std::string> results(2);
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t) {
    callers.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        Case c({(1 << 20) + 17, 300000}, 100 + t * 50 + round);
        copier.copy(c.spans);
        if (auto r = c.check(); !r.empty() && results[t].empty()) results[t] = r;
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(results[0], "");
  EXPECT_EQ(results[1], "");
}

}  // namespace
}  // namespace kvbm::detail
