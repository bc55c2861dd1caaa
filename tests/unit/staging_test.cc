// The staging of file <-> GPU copies (copy/staging.h): how a chunk list is cut into batches
// under each caller's policy (the transfer engine's Staged path: pieces kept whole where
// they fit, page starts only for direct I/O; the GDS backend's bounce path: every batch
// filled, every piece on a page), and the bounce buffer as a fixed buffer of the ring.
#include "copy/staging.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "support/test_support.h"

namespace kvbm::detail {
namespace {

struct Expect {
  uint64_t src, dst, len, stage;
};

// Every batch of `batcher`, as (src, dst, len, stage) per piece.
std::vector<std::vector<Expect>> batches_of(StagingBatcher& batcher) {
  std::vector<std::vector<Expect>> out;
  std::vector<StagedPiece> batch;
  while (batcher.next(batch)) {
    out.emplace_back();
    for (const StagedPiece& p : batch) out.back().push_back({p.src, p.dst, p.len, p.stage});
  }
  return out;
}

void expect_batches(const std::vector<std::vector<Expect>>& got,
                    const std::vector<std::vector<Expect>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    ASSERT_EQ(got[b].size(), want[b].size()) << "batch " << b;
    for (size_t i = 0; i < want[b].size(); ++i) {
      SCOPED_TRACE("batch " + std::to_string(b) + " piece " + std::to_string(i));
      EXPECT_EQ(got[b][i].src, want[b][i].src);
      EXPECT_EQ(got[b][i].dst, want[b][i].dst);
      EXPECT_EQ(got[b][i].len, want[b][i].len);
      EXPECT_EQ(got[b][i].stage, want[b][i].stage);
    }
  }
}

// The Staged path's policy: a chunk that does not fit what is left of a batch waits for
// the next; only a chunk larger than a whole batch is split, into batch-sized pieces.
TEST(StagingBatcher, ChunksWaitForTheNextBatchAndOnlyOversizedOnesSplit) {
  const std::vector<Chunk> chunks = {
      {0, 1 << 20, 12288, 0, 0}, {12288, 2 << 20, 8192, 0, 0}, {65536, 3 << 20, 40000, 0, 0}};
  StagingBatcher batcher(chunks, 16384, true, false);
  expect_batches(batches_of(batcher), {{{0, 1 << 20, 12288, 0}},
                                       {{12288, 2 << 20, 8192, 0}},
                                       {{65536, 3 << 20, 16384, 0}},
                                       {{81920, (3 << 20) + 16384, 16384, 0}},
                                       {{98304, (3 << 20) + 32768, 7232, 0}}});
}

// Pieces whose file side cannot do direct I/O start on 16 bytes, not on a page.
TEST(StagingBatcher, UnalignedPiecesStartOnSixteenBytes) {
  const std::vector<Chunk> chunks = {{1, 7, 100, 0, 0}, {200, 300, 50, 0, 0}, {4096, 0, 4096}};
  StagingBatcher batcher(chunks, 16384, true, false);
  expect_batches(batches_of(batcher),
                 {{{1, 7, 100, 0}, {200, 300, 50, 112}, {4096, 0, 4096, 4096}}});
  // The file side decides: here the destination.
  StagingBatcher to_file(chunks, 16384, false, true);
  expect_batches(batches_of(to_file),
                 {{{1, 7, 100, 0}, {200, 300, 50, 112}, {4096, 0, 4096, 4096}}});
}

// The GDS bounce path's policy: every piece on a page, and each batch filled to its end
// (a piece that does not fit is split there).
TEST(StagingBatcher, FillPolicyFillsEachBatchWithPiecesOnPages) {
  const std::vector<Chunk> chunks = {{0, 1 << 20, 5000, 0, 0}, {8192, 2 << 20, 20000, 1, 1}};
  StagingBatcher batcher(chunks, 16384, true, false, {.always_page = true, .fill = true});
  std::vector<StagedPiece> batch;
  ASSERT_TRUE(batcher.next(batch));
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].stage, 0u);
  EXPECT_EQ(batch[0].len, 5000u);
  EXPECT_EQ(batch[1].stage, 8192u);
  EXPECT_EQ(batch[1].len, 8192u);
  EXPECT_EQ(batch[1].src_region, 1u);
  ASSERT_TRUE(batcher.next(batch));
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].src, 16384u);
  EXPECT_EQ(batch[0].dst, (2u << 20) + 8192);
  EXPECT_EQ(batch[0].len, 20000u - 8192);
  EXPECT_EQ(batch[0].stage, 0u);
  EXPECT_FALSE(batcher.next(batch));
  EXPECT_TRUE(batch.empty());
}

TEST(StagingBatcher, NothingToStageIsNoBatch) {
  StagingBatcher batcher({}, 16384, true, false);
  std::vector<StagedPiece> batch(3);
  EXPECT_FALSE(batcher.next(batch));
  EXPECT_TRUE(batch.empty());
}

// System memory: page-aligned, and the ring's I/O into it (a fixed buffer) lands; a moved
// buffer keeps its memory and its registration.
TEST(StagingBuffer, SystemMemoryTakesTheRingsIo) {
  auto ring = UringBatch::create(4);
  ASSERT_TRUE(ring.ok()) << ring.error().to_string();
  testing::TempDir dir;
  const std::string path = (dir.path() / "staged").string();
  std::vector<char> bytes(8192);
  testing::fill_pattern(bytes.data(), bytes.size(), 5);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));

  auto made = StagingBuffer::allocate(**ring, 16384, false);
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  StagingBuffer buffer(std::move(*made));
  EXPECT_FALSE(buffer.pinned());
  EXPECT_EQ(buffer.size(), 16384u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 4096, 0u);
  const FileOp read{FileOp::Kind::Read, fd, 0, buffer.data() + 4096, bytes.size()};
  ASSERT_TRUE((*ring)->run({&read, 1}).ok());
  EXPECT_EQ(std::memcmp(buffer.data() + 4096, bytes.data(), bytes.size()), 0);
  ::close(fd);
}

TEST(StagingBuffer, PinnedMemoryWithoutAGpuIsAnError) {
  if (cuda_device_count().ok()) GTEST_SKIP() << "a GPU is present";
  auto ring = UringBatch::create(4);
  ASSERT_TRUE(ring.ok()) << ring.error().to_string();
  auto made = StagingBuffer::allocate(**ring, 16384, true);
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.code(), ErrorCode::DeviceUnavailable) << made.error().to_string();
}

}  // namespace
}  // namespace kvbm::detail
