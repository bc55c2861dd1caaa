#include "common/uring_batch.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace kvbm::detail {
namespace {

using kvbm::testing::LogCapture;
using kvbm::testing::TempDir;
using Kind = FileOp::Kind;

// Page-aligned buffer, freed on destruction.
struct Buf {
  explicit Buf(size_t n) : size(n) {
    p = static_cast<char*>(std::aligned_alloc(4096, (n + 4096 + 4095) / 4096 * 4096));
    std::memset(p, 0, n + 4096);
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  char* p;
  size_t size;
};

// Opens (creating) `path` with O_DIRECT when asked and the file system allows it.
int open_file(const std::filesystem::path& path, bool direct, bool* got_direct = nullptr) {
  int fd = -1;
  if (direct) fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (got_direct) *got_direct = fd >= 0;
  if (fd < 0) fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  return fd;
}

std::unique_ptr<UringBatch> make_batch(unsigned depth) {
  auto b = UringBatch::create(depth);
  if (!b) ADD_FAILURE() << b.error().to_string();
  return b ? std::move(*b) : nullptr;
}

TEST(UringBatch, QueueDepthIsValidated) {
  EXPECT_ERROR(UringBatch::create(0), ErrorCode::InvalidArgument, "queue_depth 0");
  EXPECT_ERROR(UringBatch::create(4097), ErrorCode::InvalidArgument, "queue_depth 4097");
  auto one = UringBatch::create(1);
  ASSERT_TRUE(one) << one.error().to_string();
  EXPECT_EQ((*one)->queue_depth(), 1u);
  auto max = UringBatch::create(4096);
  ASSERT_TRUE(max) << max.error().to_string();
}

TEST(UringBatch, EmptyAndZeroLengthOpsSucceed) {
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->run({}));
  FileOp op{Kind::Read, -1, 0, nullptr, 0};  // len 0: nothing to do, fd not even looked at
  EXPECT_TRUE(b->run(std::span<const FileOp>(&op, 1)));
}

// Writes then reads back every (size, offset, buffer misalignment) combination in one batch
// each way, through a queue shallower than the batch; with `fixed`, every buffer is a
// fixed buffer of the ring.
void round_trip(bool direct, bool fixed = false) {
  TempDir dir;
  bool got_direct = false;
  const int fd = open_file(dir.path() / "f", direct, &got_direct);
  ASSERT_GE(fd, 0);
  if (direct && !got_direct) GTEST_SKIP() << "temp dir file system refuses O_DIRECT";
  auto b = make_batch(4);
  ASSERT_TRUE(b);

  const std::vector<uint64_t> sizes = {1,    511,        4095,    4096,
                                       4097, 65536 + 13, 1 << 20, (3 << 20) + 1};
  const std::vector<uint64_t> offsets = {0, 1, 4096, 12345};
  const std::vector<size_t> misalign = {0, 1};
  struct Case {
    uint64_t size, file_off;
    size_t mis;
    std::unique_ptr<Buf> src, dst;
  };
  std::vector<Case> cases;
  uint64_t cursor = 0;
  for (uint64_t size : sizes) {
    for (uint64_t off : offsets) {
      for (size_t mis : misalign) {
        Case c{size, cursor + off, mis, std::make_unique<Buf>(size), std::make_unique<Buf>(size)};
        fill_pattern(c.src->p + mis, size, c.file_off);
        cases.push_back(std::move(c));
        cursor = (cursor + off + size + 4095) / 4096 * 4096;
      }
    }
  }
  std::vector<FileOp> writes, reads;
  for (auto& c : cases) {
    writes.push_back({Kind::Write, fd, c.file_off, c.src->p + c.mis, c.size});
    reads.push_back({Kind::Read, fd, c.file_off, c.dst->p + c.mis, c.size});
    if (fixed) {
      ASSERT_TRUE(b->add_fixed(c.src->p, c.size + 4096));
      ASSERT_TRUE(b->add_fixed(c.dst->p, c.size + 4096));
    }
  }
  EXPECT_EQ(b->fixed_count(), fixed ? 2 * cases.size() : 0);
  auto w = b->run(writes);
  ASSERT_TRUE(w) << w.error().to_string();
  auto r = b->run(reads);
  ASSERT_TRUE(r) << r.error().to_string();
  if (fixed) {  // each op at least once (short transfers resubmit their rest)
    EXPECT_GE(b->fixed_submissions(), writes.size() + reads.size());
  } else {
    EXPECT_EQ(b->fixed_submissions(), 0u);
  }
  for (auto& c : cases) {
    EXPECT_EQ(find_pattern_mismatch(c.dst->p + c.mis, c.size, c.file_off), SIZE_MAX)
        << "size " << c.size << " offset " << c.file_off << " misalign " << c.mis;
  }
  b->forget_fd(fd);
  ::close(fd);
}

TEST(UringBatch, RoundTripDirect) {
  round_trip(true);
}
TEST(UringBatch, RoundTripBuffered) {
  round_trip(false);
}
TEST(UringBatch, RoundTripDirectThroughFixedBuffers) {
  round_trip(true, true);
}
TEST(UringBatch, RoundTripBufferedThroughFixedBuffers) {
  round_trip(false, true);
}

// Only ops wholly inside one registered buffer go as fixed I/O; the rest (straddling its
// end, or after remove_fixed) run as plain I/O, with the same bytes.
TEST(UringBatch, FixedBuffersServeOnlyOpsInsideThem) {
  TempDir dir;
  const int fd = open_file(dir.path() / "f", true);
  ASSERT_GE(fd, 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  Buf buf(1 << 20);
  fill_pattern(buf.p, 1 << 20, 5);
  EXPECT_FALSE(b->add_fixed(nullptr, 4096));
  EXPECT_FALSE(b->add_fixed(buf.p, 0));
  ASSERT_TRUE(b->add_fixed(buf.p, 512 << 10));  // the first half only
  EXPECT_TRUE(b->add_fixed(buf.p, 512 << 10));  // again: already there
  EXPECT_EQ(b->fixed_count(), 1u);
  const FileOp inside{Kind::Write, fd, 0, buf.p, 512 << 10};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&inside, 1)));
  EXPECT_EQ(b->fixed_submissions(), 1u);
  const FileOp straddling{Kind::Write, fd, 512 << 10, buf.p + (256 << 10), 512 << 10};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&straddling, 1)));
  EXPECT_EQ(b->fixed_submissions(), 1u);
  b->remove_fixed(buf.p);
  b->remove_fixed(buf.p);  // twice: nothing left to remove
  EXPECT_EQ(b->fixed_count(), 0u);
  Buf back(1 << 20);
  const FileOp read{Kind::Read, fd, 0, back.p, 1 << 20};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&read, 1)));
  EXPECT_EQ(b->fixed_submissions(), 1u);
  EXPECT_EQ(find_pattern_mismatch(back.p, 512 << 10, 5), SIZE_MAX);
  EXPECT_EQ(find_pattern_mismatch(back.p + (512 << 10), 512 << 10, 5, 256 << 10), SIZE_MAX);
  b->forget_fd(fd);
  ::close(fd);
}

// The ring has 1024 fixed buffer slots: the next registration is refused (and logged once),
// and a freed slot is reused.
TEST(UringBatch, FixedBufferSlotsRunOutWithALoggedRefusal) {
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  Buf buf(1025 * 4096);
  LogCapture log;
  for (size_t i = 0; i < 1024; ++i) ASSERT_TRUE(b->add_fixed(buf.p + i * 4096, 4096)) << i;
  EXPECT_FALSE(b->add_fixed(buf.p + 1024 * 4096, 4096));
  EXPECT_FALSE(b->add_fixed(buf.p + 1024 * 4096, 4096));
  EXPECT_EQ(b->fixed_count(), 1024u);
  size_t refusals = 0;
  for (const auto& line : log.lines())
    refusals += line.find("fixed buffers refused") != std::string::npos;
  EXPECT_EQ(refusals, 1u);
  EXPECT_TRUE(log.contains("all 1024 slots"));
  b->remove_fixed(buf.p);
  EXPECT_TRUE(b->add_fixed(buf.p + 1024 * 4096, 4096));
  EXPECT_EQ(b->fixed_count(), 1024u);
}

// add_fixed() and remove_fixed() may come from another thread while I/O runs (the POSIX
// backend registers memory from its callers' threads while its worker does I/O); every
// byte lands whichever way each op went.
TEST(UringBatch, FixedBuffersComeAndGoWhileIoRuns) {
  TempDir dir;
  const int fd = open_file(dir.path() / "f", true);
  ASSERT_GE(fd, 0);
  auto b = make_batch(8);
  ASSERT_TRUE(b);
  constexpr size_t kBlock = 64 << 10, kBlocks = 64;
  Buf src(kBlock * kBlocks), dst(kBlock * kBlocks);
  fill_pattern(src.p, kBlock * kBlocks, 3);
  std::vector<FileOp> w, r;
  for (size_t i = 0; i < kBlocks; ++i) {
    w.push_back({Kind::Write, fd, i * kBlock, src.p + i * kBlock, kBlock});
    r.push_back({Kind::Read, fd, i * kBlock, dst.p + i * kBlock, kBlock});
  }
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load()) {
      for (size_t i = 0; i < kBlocks; i += 2) b->add_fixed(src.p + i * kBlock, kBlock);
      for (size_t i = 1; i < kBlocks; i += 2) b->add_fixed(dst.p + i * kBlock, kBlock);
      for (size_t i = 0; i < kBlocks; ++i) {
        b->remove_fixed(src.p + i * kBlock);
        b->remove_fixed(dst.p + i * kBlock);
      }
    }
  });
  for (int round = 0; round < 20; ++round) {
    std::memset(dst.p, 0, kBlock * kBlocks);
    auto st = b->run(w);
    if (st) st = b->run(r);
    EXPECT_TRUE(st) << st.error().to_string();
    EXPECT_EQ(find_pattern_mismatch(dst.p, kBlock * kBlocks, 3), SIZE_MAX) << "round " << round;
  }
  stop = true;
  churn.join();
  b->forget_fd(fd);
  ::close(fd);
}

TEST(UringBatch, LargeOpsAreSplitAndManyOpsShareTheQueue) {
  TempDir dir;
  const int fd = open_file(dir.path() / "f", true);
  ASSERT_GE(fd, 0);
  auto b = make_batch(8);
  ASSERT_TRUE(b);
  const size_t block = 64 << 10, n = 256;
  Buf src(block * n), dst(block * n);
  fill_pattern(src.p, block * n, 7);
  std::vector<FileOp> w, r;
  for (size_t i = 0; i < n; ++i) {  // reversed order on the file: offsets are honoured
    w.push_back({Kind::Write, fd, (n - 1 - i) * block, src.p + i * block, block});
    r.push_back({Kind::Read, fd, (n - 1 - i) * block, dst.p + i * block, block});
  }
  ASSERT_TRUE(b->run(w));
  ASSERT_TRUE(b->run(r));
  EXPECT_EQ(find_pattern_mismatch(dst.p, block * n, 7), SIZE_MAX);
  ::close(fd);
}

// Ops longer than 1 MiB go as 1 MiB parts in flight together: an aligned one (direct
// throughout) and one with an unaligned tail (its last part buffered) land whole, and an
// error in a later part names the op and the offset where it happened.
TEST(UringBatch, LongOpsGoAsPartsAndLandWhole) {
  TempDir dir;
  const auto path = dir.path() / "f";
  const int fd = open_file(path, true);
  ASSERT_GE(fd, 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  const size_t a_len = (size_t{5} << 20) + 4096, u_len = (size_t{3} << 20) + 5;
  Buf src(a_len + u_len), dst(a_len + u_len);
  fill_pattern(src.p, a_len + u_len, 12);
  const std::vector<FileOp> w = {{Kind::Write, fd, 0, src.p, a_len},
                                 {Kind::Write, fd, a_len, src.p + a_len, u_len}};
  const std::vector<FileOp> r = {{Kind::Read, fd, 0, dst.p, a_len},
                                 {Kind::Read, fd, a_len, dst.p + a_len, u_len}};
  ASSERT_TRUE(b->run(w));
  EXPECT_EQ(std::filesystem::file_size(path), a_len + u_len);
  ASSERT_TRUE(b->run(r));
  EXPECT_EQ(find_pattern_mismatch(dst.p, a_len + u_len, 12), SIZE_MAX);
  // Reading 4 MiB from 6 MiB on: the parts past the end fail; the first of them to come
  // back names itself.
  const FileOp past{Kind::Read, fd, size_t{6} << 20, dst.p, size_t{4} << 20};
  auto st = b->run(std::span<const FileOp>(&past, 1));
  EXPECT_ERROR(st, ErrorCode::Io, "offset 6291456 len 4194304");
  EXPECT_NE(st.error().message.find("read past end of file at offset"), std::string::npos);
  b->forget_fd(fd);
  ::close(fd);
}

TEST(UringBatch, BufferedFallbackIsLoggedOncePerFd) {
  TempDir dir;
  bool got_direct = false;
  const int fd = open_file(dir.path() / "f", true, &got_direct);
  ASSERT_GE(fd, 0);
  if (!got_direct) GTEST_SKIP() << "temp dir file system refuses O_DIRECT";
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  LogCapture logs;
  Buf buf(100);
  std::vector<FileOp> ops;
  for (int i = 0; i < 10; ++i) ops.push_back({Kind::Write, fd, uint64_t(i) * 100, buf.p, 100});
  ASSERT_TRUE(b->run(ops));
  ASSERT_TRUE(b->run(ops));
  int count = 0;
  for (const auto& l : logs.lines()) {
    if (l.find("buffered twin") != std::string::npos) {
      ++count;
      EXPECT_NE(l.find("fd " + std::to_string(fd)), std::string::npos) << l;
    }
  }
  EXPECT_EQ(count, 1);
  b->forget_fd(fd);
  ::close(fd);
}

TEST(UringBatch, ReusedFdNumberGetsAFreshTwin) {
  TempDir dir;
  bool got_direct = false;
  const int fd1 = open_file(dir.path() / "a", true, &got_direct);
  ASSERT_GE(fd1, 0);
  if (!got_direct) GTEST_SKIP() << "temp dir file system refuses O_DIRECT";
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  char data[3] = {'a', 'b', 'c'};
  FileOp op{Kind::Write, fd1, 0, data, 3};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&op, 1)));
  ::close(fd1);  // no forget_fd: the batch must notice the new file behind the same number
  const int fd2 = open_file(dir.path() / "b", true);
  ASSERT_EQ(fd2, fd1);
  char data2[3] = {'x', 'y', 'z'};
  op = {Kind::Write, fd2, 0, data2, 3};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&op, 1)));
  EXPECT_EQ(std::filesystem::file_size(dir.path() / "b"), 3u);
  char back[3] = {};
  op = {Kind::Read, fd2, 0, back, 3};
  ASSERT_TRUE(b->run(std::span<const FileOp>(&op, 1)));
  EXPECT_EQ(std::string(back, 3), "xyz");
  b->forget_fd(fd2);
  b->forget_fd(fd2);  // twice, and for an unknown fd: harmless
  b->forget_fd(12345);
  ::close(fd2);
}

TEST(UringBatch, ReadPastEndOfFileIsAnError) {
  TempDir dir;
  const auto path = dir.path() / "short";
  const int fd = open_file(path, true);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 8192), 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  Buf buf(8192);
  FileOp op{Kind::Read, fd, 4096, buf.p, 8192};  // aligned: direct, then short at 8192
  auto r = b->run(std::span<const FileOp>(&op, 1));
  EXPECT_ERROR(r, ErrorCode::Io, "read past end of file at offset 8192");
  EXPECT_NE(r.error().message.find(path.string()), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("offset 4096 len 8192"), std::string::npos);
  op = {Kind::Read, fd, 9000, buf.p + 1, 10};  // wholly past the end, unaligned
  EXPECT_ERROR(b->run(std::span<const FileOp>(&op, 1)), ErrorCode::Io, "read past end of file");
  b->forget_fd(fd);
  ::close(fd);
}

TEST(UringBatch, ClosedFdAndBadArgumentsAreErrors) {
  TempDir dir;
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  const int fd = testing::move_fd_high(open_file(dir.path() / "f", false));
  ASSERT_GE(fd, 0);
  ::close(fd);
  Buf buf(4096);
  FileOp op{Kind::Write, fd, 0, buf.p, 4096};
  auto r = b->run(std::span<const FileOp>(&op, 1));
  EXPECT_ERROR(r, ErrorCode::Io, "Bad file descriptor");
  EXPECT_NE(r.error().message.find("write fd " + std::to_string(fd)), std::string::npos);

  const int fd2 = open_file(dir.path() / "g", false);
  op = {Kind::Write, fd2, 0, nullptr, 10};
  EXPECT_ERROR(b->run(std::span<const FileOp>(&op, 1)), ErrorCode::Io, "null buffer");
  op = {Kind::Write, fd2, uint64_t(INT64_MAX), buf.p, 10};
  EXPECT_ERROR(b->run(std::span<const FileOp>(&op, 1)), ErrorCode::InvalidArgument, "overflows");
  // A read-only fd refuses writes: the kernel's error comes back with the op named.
  const int ro = ::open((dir.path() / "g").c_str(), O_RDONLY | O_CLOEXEC);
  op = {Kind::Write, ro, 0, buf.p, 4096};
  EXPECT_ERROR(b->run(std::span<const FileOp>(&op, 1)), ErrorCode::Io, "Bad file descriptor");
  ::close(ro);
  ::close(fd2);
}

// Streaming: groups finish on their own as their ops end, a group added while others run
// joins the same queue, and a failing group ends with its error and leaves the others be.
TEST(UringBatch, GroupsFinishOnTheirOwnAndFailAlone) {
  TempDir dir;
  const int fd = open_file(dir.path() / "f", true);
  ASSERT_GE(fd, 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->idle());
  EXPECT_TRUE(b->progress(true).empty());  // nothing to wait for: returns at once
  constexpr size_t kBlock = 64 << 10, kPerGroup = 8;
  Buf src(3 * kPerGroup * kBlock), dst(3 * kPerGroup * kBlock);
  fill_pattern(src.p, 3 * kPerGroup * kBlock, 9);
  std::vector<std::vector<FileOp>> writes(3), reads(3);
  for (size_t g = 0; g < 3; ++g) {
    for (size_t i = 0; i < kPerGroup; ++i) {
      const size_t at = (g * kPerGroup + i) * kBlock;
      writes[g].push_back({Kind::Write, fd, at, src.p + at, kBlock});
      reads[g].push_back({Kind::Read, fd, at, dst.p + at, kBlock});
    }
  }
  // Drives progress() until `want` groups finished; returns them by group id.
  auto finish = [&](size_t want) {
    std::map<uint64_t, Status> done;
    for (int spins = 0; done.size() < want && spins < 100000; ++spins) {
      for (auto& f : b->progress(true)) {
        EXPECT_EQ(done.count(f.group), 0u) << "group " << f.group << " finished twice";
        done.emplace(f.group, std::move(f.status));
      }
    }
    return done;
  };
  ASSERT_TRUE(b->add(10, writes[0]));
  ASSERT_TRUE(b->add(11, writes[1]));
  EXPECT_ERROR(b->add(10, writes[2]), ErrorCode::InvalidArgument, "group 10 has not finished");
  EXPECT_FALSE(b->idle());
  (void)b->progress(false);            // the first ops go out
  ASSERT_TRUE(b->add(12, writes[2]));  // joins while the others run
  auto w = finish(3);
  ASSERT_EQ(w.size(), 3u);
  for (auto& [g, st] : w) EXPECT_TRUE(st) << "group " << g << ": " << st.error().to_string();
  EXPECT_TRUE(b->idle());

  // A read past the end of the file fails group 21 alone.
  std::vector<FileOp> bad = reads[1];
  bad[3].offset = 1 << 30;
  ASSERT_TRUE(b->add(20, reads[0]));
  ASSERT_TRUE(b->add(21, bad));
  ASSERT_TRUE(b->add(22, reads[2]));
  ASSERT_TRUE(b->add(23, {}));  // nothing to do: finishes at once
  auto r = finish(4);
  ASSERT_EQ(r.size(), 4u);
  EXPECT_TRUE(r.at(20));
  EXPECT_ERROR(r.at(21), ErrorCode::Io, "read past end of file");
  EXPECT_TRUE(r.at(22));
  EXPECT_TRUE(r.at(23));
  for (size_t g : {0, 2}) {
    const size_t at = g * kPerGroup * kBlock;
    EXPECT_EQ(find_pattern_mismatch(dst.p + at, kPerGroup * kBlock, 9, at), SIZE_MAX) << g;
  }
  // A group refused by add() queues nothing.
  std::vector<FileOp> null_buf = {reads[0][0], {Kind::Read, fd, 0, nullptr, 16}};
  EXPECT_ERROR(b->add(30, null_buf), ErrorCode::Io, "null buffer");
  EXPECT_TRUE(b->idle());
  b->forget_fd(fd);
  ::close(fd);
}

// The fd of this process's one io_uring (the test's batch), or -1.
int io_uring_fd() {
  int found = -1;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec).string() == "anon_inode:[io_uring]") {
      if (found >= 0) return -1;  // two rings: which one is ours?
      found = std::stoi(e.path().filename().string());
    }
  }
  return found;
}

// Makes io_uring_enter fail on the batch's ring: its fd number now names /dev/null. The
// ring itself lives on through its mappings, so ops the kernel holds still complete.
bool break_ring() {
  const int ring = io_uring_fd();
  const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const bool ok = ring >= 0 && null >= 0 && ::dup2(null, ring) == ring;
  if (null >= 0) ::close(null);
  return ok;
}

// Drives progress() for up to `for_ms`, collecting finished groups. progress(true) waits
// for a completion: `wait` false polls instead, for ops that may not complete at all.
std::map<uint64_t, Status> drive(UringBatch& b, std::map<uint64_t, Status> done, size_t want,
                                 int for_ms, bool wait = true) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(for_ms);
  while (done.size() < want && std::chrono::steady_clock::now() < until) {
    for (auto& f : b.progress(wait)) {
      EXPECT_EQ(done.count(f.group), 0u) << "group " << f.group << " finished twice";
      done.emplace(f.group, std::move(f.status));
    }
  }
  return done;
}

// Transfers the kernel does in part go on from where they stopped until whole; on a
// non-blocking pipe with nothing to read or no room to write, so that a kernel that
// answers EAGAIN there (rather than waiting) has it retried too.
TEST(UringBatch, ShortTransfersGoOnUntilWhole) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  Buf in(4096);
  const std::vector<FileOp> read = {{Kind::Read, p[0], 0, in.p, 12}};
  ASSERT_TRUE(b->add(1, read));
  EXPECT_TRUE(drive(*b, {}, 1, 50, false).empty()) << "ended with nothing to read";
  ASSERT_EQ(::write(p[1], "hello ", 6), 6);
  EXPECT_TRUE(drive(*b, {}, 1, 50, false).empty()) << "ended after a short read";
  ASSERT_EQ(::write(p[1], "world!", 6), 6);
  auto done = drive(*b, {}, 1, 5000, false);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done.at(1)) << done.at(1).error().to_string();
  EXPECT_EQ(std::string(in.p, 12), "hello world!");

  // A write of three times what the pipe holds, drained by a slow reader.
  ASSERT_GE(::fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
  const size_t n = 3 * static_cast<size_t>(::fcntl(p[1], F_GETPIPE_SZ));
  Buf out(n);
  kvbm::testing::fill_pattern(out.p, n, 9);
  const std::vector<FileOp> write = {{Kind::Write, p[1], 0, out.p, n}};
  ASSERT_TRUE(b->add(2, write));
  std::string got;
  std::thread reader([&] {
    char chunk[1000];
    // Bounded: if the write fails, the test fails below rather than hanging here.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (got.size() < n && std::chrono::steady_clock::now() < until) {
      const ssize_t r = ::read(p[0], chunk, sizeof chunk);
      if (r > 0) got.append(chunk, static_cast<size_t>(r));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  done = drive(*b, {}, 1, 10000, false);
  reader.join();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done.at(2)) << done.at(2).error().to_string();
  ASSERT_EQ(got.size(), n);
  EXPECT_EQ(kvbm::testing::find_pattern_mismatch(got.data(), n, 9), SIZE_MAX);
  b.reset();
  ::close(p[0]);
  ::close(p[1]);
}

// A failed ring ends every group with its error, but a group whose op the kernel holds
// (here a read from an empty pipe) finishes only when the kernel is done with its buffer;
// ops the kernel never took end at once and never run.
TEST(UringBatch, RingFailureEndsGroupsOnlyOnceTheKernelLetsGoOfTheirBuffers) {
  TempDir dir;
  const int fd = open_file(dir.path() / "f", false);
  ASSERT_GE(fd, 0);
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  auto b = make_batch(4);
  ASSERT_TRUE(b);
  Buf in(4096), out(4096);
  std::memset(out.p, 'x', 4096);
  const std::vector<FileOp> read_pipe = {{Kind::Read, pipe_fds[0], 0, in.p, 5}};
  const std::vector<FileOp> write_file = {{Kind::Write, fd, 0, out.p, 4096}};
  ASSERT_TRUE(b->add(1, read_pipe));
  EXPECT_TRUE(b->progress(false).empty());  // submitted; waits for the pipe
  ASSERT_TRUE(break_ring());
  ASSERT_TRUE(b->add(2, write_file));  // prepared, then refused with the ring
  auto done = drive(*b, {}, 1, 2000);
  ASSERT_EQ(done.size(), 1u) << "the write the kernel never took ends at once, alone";
  EXPECT_ERROR(done.at(2), ErrorCode::Io, "io_uring_submit_and_wait");
  EXPECT_EQ(std::filesystem::file_size(dir.path() / "f"), 0u) << "the refused write ran";
  EXPECT_ERROR(b->add(3, write_file), ErrorCode::Io, "takes no more I/O");
  EXPECT_FALSE(b->idle());

  // The pipe read still belongs to the kernel: it completes, and only then its group ends.
  done = drive(*b, {}, 1, 50);
  EXPECT_TRUE(done.empty()) << "group 1 ended while the kernel still held its buffer";
  ASSERT_EQ(::write(pipe_fds[1], "hello", 5), 5);
  done = drive(*b, {}, 1, 5000);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_ERROR(done.at(1), ErrorCode::Io, "io_uring_submit_and_wait");
  EXPECT_EQ(std::string(in.p, 5), "hello");
  EXPECT_TRUE(b->idle());
  b.reset();
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  ::close(fd);
}

// An op the kernel holds past the grace time no longer holds its group: it ends with an
// error that says so.
TEST(UringBatch, RingFailureGivesUpOnOpsTheKernelKeepsPastTheGraceTime) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  Buf in(4096);  // outlives the batch: destroying the ring cancels the read
  {
    auto b = make_batch(2);
    ASSERT_TRUE(b);
    b->set_failure_grace(std::chrono::milliseconds(100));
    const std::vector<FileOp> read_pipe = {{Kind::Read, pipe_fds[0], 0, in.p, 5}};
    ASSERT_TRUE(b->add(7, read_pipe));
    EXPECT_TRUE(b->progress(false).empty());
    ASSERT_TRUE(break_ring());
    const auto start = std::chrono::steady_clock::now();
    auto done = drive(*b, {}, 1, 5000);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));
    EXPECT_ERROR(done.at(7), ErrorCode::Io, "1 ops still held by the kernel after 100 ms");
    EXPECT_TRUE(b->idle());
    EXPECT_TRUE(b->progress(true).empty());
  }
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

TEST(UringBatch, FullFileSystemIsAnError) {
  TempDir dir;
  const auto mnt = dir.path() / "mnt";
  std::filesystem::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  }
  {
    const int fd = open_file(mnt / "f", false);
    ASSERT_GE(fd, 0);
    auto b = make_batch(4);
    ASSERT_TRUE(b);
    Buf buf(1 << 20);
    FileOp op{Kind::Write, fd, 0, buf.p, 1 << 20};
    auto r = b->run(std::span<const FileOp>(&op, 1));
    EXPECT_ERROR(r, ErrorCode::Io, "No space left on device");
    EXPECT_NE(r.error().message.find((mnt / "f").string()), std::string::npos);
    ::close(fd);
  }
  ::umount2(mnt.c_str(), MNT_DETACH);
}

TEST(UringBatch, FileSizeLimitIsAnError) {
  TempDir dir;
  const auto path = dir.path() / "f";
  // In a child: RLIMIT_FSIZE would also cap this process's other files.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {
      65536, 65536
    };
    ::setrlimit(RLIMIT_FSIZE, &lim);
    const int fd = open_file(path, true);
    auto b = UringBatch::create(4);
    if (fd < 0 || !b) ::_exit(2);
    static char buf[1 << 20] __attribute__((aligned(4096)));
    FileOp op{Kind::Write, fd, 0, buf, sizeof(buf)};
    auto r = (*b)->run(std::span<const FileOp>(&op, 1));
    if (r) ::_exit(3);
    const bool named = r.code() == ErrorCode::Io &&
                       r.error().message.find("File too large") != std::string::npos &&
                       r.error().message.find(path.string()) != std::string::npos;
    ::_exit(named ? 0 : 4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: setup failed, 3: write succeeded, 4: wrong error";
}

}  // namespace
}  // namespace kvbm::detail
