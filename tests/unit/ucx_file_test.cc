// Remote files, the pieces below the UCX backend: the wire form of chunk requests and
// replies (bytes from the network), and the owner's FileServer (served regions, staging
// buffers, reads and writes with errors that name the file and offset) and the thread
// that serves peers' chunks off the backend's lock.
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "support/test_support.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_serving_thread.h"
#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer::detail {
namespace {

TEST(FileWire, RequestsAndRepliesRoundTrip) {
  FileRequestHeader req{Op::Write, 7, 3, 12, 4097, 65536};
  auto r = decode_file_request(encode(req));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->op, Op::Write);
  EXPECT_EQ(r->xfer, 7u);
  EXPECT_EQ(r->seq, 3u);
  EXPECT_EQ(r->fd, 12u);
  EXPECT_EQ(r->offset, 4097u);
  EXPECT_EQ(r->len, 65536u);
  auto ok = decode_file_reply(encode(FileReplyHeader{7, 3, std::nullopt}));
  ASSERT_TRUE(ok.ok());
  EXPECT_FALSE(ok->error.has_value());
  EXPECT_FALSE(ok->busy);
  auto busy = decode_file_reply(encode(FileReplyHeader{7, 3, std::nullopt, true}));
  ASSERT_TRUE(busy.ok());
  EXPECT_TRUE(busy->busy);
  EXPECT_FALSE(busy->error.has_value());
  EXPECT_EQ(busy->seq, 3u);
  auto bad = decode_file_reply(encode(FileReplyHeader{7, 3, ErrorCode::Io}));
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->error, ErrorCode::Io);
}

TEST(FileWire, MalformedBytesAreRejected) {
  const std::string good = encode(FileRequestHeader{Op::Read, 1, 0, 3, 0, 4096});
  EXPECT_FALSE(decode_file_request(good.substr(0, good.size() - 1)).ok());
  EXPECT_FALSE(decode_file_request(good + "x").ok());
  EXPECT_FALSE(decode_file_request("").ok());
  std::string magic = good;
  magic[0] ^= 1;
  EXPECT_FALSE(decode_file_request(magic).ok());
  std::string version = good;
  version[4] = 9;
  EXPECT_FALSE(decode_file_request(version).ok());
  std::string op = good;
  op[6] = 5;
  EXPECT_FALSE(decode_file_request(op).ok());
  EXPECT_FALSE(decode_file_request(encode(FileRequestHeader{Op::Read, 1, 0, 3, 0, 0})).ok());
  EXPECT_FALSE(
      decode_file_request(encode(FileRequestHeader{Op::Read, 1, 0, 3, 0, kFileChunkBytes + 1}))
          .ok());
  auto overflow = decode_file_request(encode(FileRequestHeader{Op::Read, 1, 0, 3, ~0ull, 2}));
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.error().message.find("overflows"), std::string::npos);
  // A reply's error code beyond the known ones, and a request where a reply belongs.
  std::string code = encode(FileReplyHeader{1, 0, ErrorCode::Io});
  code[8] = 100;
  EXPECT_FALSE(decode_file_reply(code).ok());
  code[8] = static_cast<char>(-3);  // -3: below both "no error" (-1) and "busy" (-2)
  code[9] = code[10] = code[11] = static_cast<char>(0xff);
  EXPECT_FALSE(decode_file_reply(code).ok());
  EXPECT_FALSE(decode_file_reply(good).ok());
}

// An unlinked temporary file, closed with the test.
struct TempFile {
  int fd = -1;
  TempFile() {
    char path[] = "/tmp/kvbm_file_server_XXXXXX";
    fd = mkstemp(path);
    if (fd >= 0) unlink(path);
  }
  ~TempFile() {
    if (fd >= 0) close(fd);
  }
};

TEST(FileServer, ServesOnlyRegisteredRanges) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  FileServer s;
  s.add({4096, 8192, fd});
  EXPECT_TRUE(s.check(fd, 4096, 8192).ok());
  EXPECT_TRUE(s.check(fd, 8000, 1).ok());
  auto past = s.check(fd, 8192, 8192);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.code(), ErrorCode::OutOfBounds);
  EXPECT_NE(past.error().message.find("fd " + std::to_string(fd) + " offset 8192"),
            std::string::npos);
  EXPECT_FALSE(s.check(fd, 0, 4096).ok());
  EXPECT_FALSE(s.check(fd + 1, 4096, 1).ok());
  s.remove({4096, 8192, fd});
  EXPECT_FALSE(s.check(fd, 4096, 1).ok());
}

TEST(FileServer, AnFdReusedForAnotherFileIsRefused) {
  TempFile f, other;
  ASSERT_GE(f.fd, 0);
  ASSERT_GE(other.fd, 0);
  FileServer s;
  s.add({0, 4096, static_cast<uint64_t>(f.fd)});
  ASSERT_EQ(dup2(other.fd, f.fd), f.fd);  // the number now names another file
  auto st = s.check(static_cast<uint64_t>(f.fd), 0, 16);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), ErrorCode::Io);
  EXPECT_NE(st.error().message.find("no longer refers"), std::string::npos);
}

// Starts every io on the server's stream and reaps them all: each io's own status, in order.
std::vector<Status> serve_all(FileServer& s, const std::vector<FileServer::Io>& ios) {
  std::vector<Status> out(ios.size());
  size_t running = 0;
  for (size_t i = 0; i < ios.size(); ++i) {
    out[i] = s.start(i, ios[i]);
    if (out[i]) ++running;
  }
  for (int spins = 0; running > 0 && spins < 100000; ++spins) {
    for (auto& [id, st] : s.finished(true)) {
      out.at(id) = std::move(st);
      --running;
    }
  }
  EXPECT_EQ(running, 0u) << "ios never finished";
  return out;
}

TEST(FileServer, ReadsAndWritesWithErrorsNamingFdAndOffset) {
  char path[] = "/tmp/kvbm_file_server_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  const uint64_t ufd = static_cast<uint64_t>(fd);
  FileServer s;
  s.add({0, 20000, ufd});
  std::vector<char> data(10000), back(10000);
  testing::fill_pattern(data.data(), data.size(), 3);
  auto one = [&](Op op, uint64_t at_fd, uint64_t offset, char* buf, uint64_t len) {
    return serve_all(s, {{op, at_fd, offset, len, buf}}).at(0);
  };
  ASSERT_TRUE(one(Op::Write, ufd, 5, data.data(), data.size()).ok());
  ASSERT_TRUE(one(Op::Read, ufd, 5, back.data(), back.size()).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(back.data(), back.size(), 3), SIZE_MAX);
  auto eof = one(Op::Read, ufd, 9000, back.data(), 4096);
  ASSERT_FALSE(eof.ok());
  EXPECT_NE(eof.error().message.find("offset 9000"), std::string::npos) << eof.error().message;
  EXPECT_NE(eof.error().message.find("end of file"), std::string::npos) << eof.error().message;
  close(fd);
  auto closed = one(Op::Read, ufd, 0, back.data(), 16);
  ASSERT_FALSE(closed.ok());
  EXPECT_NE(closed.error().message.find("offset 0"), std::string::npos);
  EXPECT_FALSE(one(Op::Read, uint64_t{1} << 40, 0, back.data(), 16).ok());
}

TEST(FileServer, StagingIsBoundedAndReused) {
  FileServer s;
  EXPECT_EQ(s.max_staging(), FileServer::kDefaultMaxStaging);
  std::vector<Staging> held;
  for (size_t i = 0; i < FileServer::kDefaultMaxStaging; ++i) {
    bool at_cap = true;
    held.push_back(s.acquire(&at_cap));
    ASSERT_TRUE(held.back());
    EXPECT_FALSE(at_cap);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(held.back().get()) % 4096, 0u);
  }
  bool at_cap = false;
  EXPECT_FALSE(s.acquire(&at_cap));  // READs wait; WRITEs are answered "busy"
  EXPECT_TRUE(at_cap);
  EXPECT_EQ(s.in_use(), FileServer::kDefaultMaxStaging);
  held.pop_back();
  held.pop_back();
  EXPECT_EQ(s.in_use(), FileServer::kDefaultMaxStaging - 2);
  Staging again = s.acquire();  // from the free list
  EXPECT_TRUE(again);
  EXPECT_EQ(s.in_use(), FileServer::kDefaultMaxStaging - 1);
}

TEST(FileServer, TheStagingCapIsTheServersOwn) {
  FileServer s(2);
  EXPECT_EQ(s.max_staging(), 2u);
  Staging a = s.acquire(), b = s.acquire();
  ASSERT_TRUE(a && b);
  bool at_cap = false;
  EXPECT_FALSE(s.acquire(&at_cap));
  EXPECT_TRUE(at_cap);
  a.reset();
  Staging c = s.acquire(&at_cap);
  EXPECT_TRUE(c);
  EXPECT_FALSE(at_cap);
}

TEST(FileServer, StreamsIosGivingEachItsOwnStatus) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  std::vector<char> data(3 * 4096);
  testing::fill_pattern(data.data(), data.size(), 5);
  ASSERT_EQ(pwrite(f.fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  FileServer s;
  s.add({0, 8 * 4096, fd});
  std::vector<char> a(4096), b(4096), c(4096), w(4096, 'w');
  const std::vector<FileServer::Io> ios = {
      {Op::Read, fd, 0, 4096, a.data()},
      {Op::Read, fd, 2 * 4096 + 100, 4096, b.data()},  // past the end of the file
      {Op::Write, fd, 4096, 4096, w.data()},
      {Op::Read, fd, 7 * 4096, 8192, c.data()},  // past the region
      {Op::Read, fd, 2 * 4096, 4096, c.data()},
  };
  EXPECT_TRUE(s.finished(true).empty());  // nothing started: returns at once
  auto st = serve_all(s, ios);
  EXPECT_TRUE(st[0].ok()) << st[0].error().to_string();
  ASSERT_FALSE(st[1].ok());
  EXPECT_NE(st[1].error().message.find("offset 8292"), std::string::npos) << st[1].error().message;
  EXPECT_TRUE(st[2].ok()) << st[2].error().to_string();
  ASSERT_FALSE(st[3].ok());
  EXPECT_EQ(st[3].code(), ErrorCode::OutOfBounds);
  EXPECT_TRUE(st[4].ok()) << st[4].error().to_string();
  // An id still running cannot start again.
  ASSERT_TRUE(s.start(9, ios[0]));
  EXPECT_ERROR(s.start(9, ios[0]), ErrorCode::InvalidArgument, "file io 9 is already running");
  for (int spins = 0; spins < 1000 && s.finished(true).empty(); ++spins) {
  }
  EXPECT_EQ(testing::find_pattern_mismatch(a.data(), 4096, 5), SIZE_MAX);
  EXPECT_EQ(testing::find_pattern_mismatch(c.data(), 4096, 5, 2 * 4096), SIZE_MAX);
  std::vector<char> back(4096);
  ASSERT_EQ(pread(f.fd, back.data(), 4096, 4096), 4096);
  EXPECT_EQ(back, w);
}

// A FIFO registered as a file: a read of it waits until the test writes the bytes.
struct Fifo {
  int rd = -1, wr = -1;
  Fifo() {
    int p[2];
    if (pipe(p) == 0) {
      rd = p[0];
      wr = p[1];
    }
  }
  ~Fifo() {
    if (rd >= 0) close(rd);
    if (wr >= 0) close(wr);
  }
  // Waits until the reader has taken every byte written so far.
  bool drained() const {
    for (int i = 0; i < 30000; ++i) {
      int n = -1;
      if (ioctl(wr, FIONREAD, &n) != 0) return false;
      if (n == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
};

TEST(FileServer, RemoveWaitsForTheIoInProgressThenRefusesTheRegion) {
  Fifo f;
  ASSERT_GE(f.rd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.rd);
  FileServer s;
  s.add({0, 4096, fd});
  std::vector<char> got(64), sent(64, 'x');
  const std::vector<FileServer::Io> ios = {{Op::Read, fd, 0, 64, got.data()}};
  std::vector<Status> st;
  std::thread io([&] { st = serve_all(s, ios); });
  ASSERT_EQ(write(f.wr, sent.data(), 32), 32);
  ASSERT_TRUE(f.drained());  // the read is under way, waiting for the rest
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    s.remove({0, 4096, fd});
    removed = true;
  });
  EXPECT_FALSE(removed.load());  // it cannot return before the read does
  ASSERT_EQ(write(f.wr, sent.data(), 32), 32);
  io.join();
  remover.join();
  EXPECT_TRUE(removed.load());
  ASSERT_EQ(st.size(), 1u);
  EXPECT_TRUE(st[0].ok()) << st[0].error().to_string();
  EXPECT_EQ(got, sent);
  auto after = s.check(fd, 0, 64);
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.code(), ErrorCode::OutOfBounds);
}

// Takes the serving thread's done jobs until `n` have come back (or 30 s have passed).
std::vector<FileJob> wait_done(FileServingThread& t, size_t n) {
  std::vector<FileJob> done;
  for (int i = 0; i < 30000 && done.size() < n; ++i) {
    for (FileJob& j : t.take_done()) done.push_back(std::move(j));
    if (done.size() < n) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return done;
}

TEST(FileServingThread, ServesJobsAndHandsThemBackWithTheirStatus) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  FileServer s;
  s.add({0, 1 << 20, fd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  for (uint64_t i = 0; i < 4; ++i) {
    FileJob j{i, {Op::Write, 1, i, fd, i * 4096, 4096}, s.acquire(), {}};
    ASSERT_TRUE(j.data);
    testing::fill_pattern(j.data.get(), 4096, 9, i * 4096);
    jobs.push_back(std::move(j));
  }
  t.submit(jobs);
  EXPECT_TRUE(jobs.empty());
  auto done = wait_done(t, 4);
  ASSERT_EQ(done.size(), 4u);
  for (const FileJob& j : done) EXPECT_TRUE(j.status.ok()) << j.status.error().to_string();
  done.clear();
  EXPECT_EQ(s.in_use(), 0u);

  jobs.push_back({7, {Op::Read, 1, 0, fd, 0, 4 * 4096}, s.acquire(), {}});
  jobs.push_back({8, {Op::Read, 1, 1, fd + 1, 0, 4096}, s.acquire(), {}});  // not served
  t.submit(jobs);
  done = wait_done(t, 2);
  ASSERT_EQ(done.size(), 2u);
  for (const FileJob& j : done) {
    if (j.id == 7) {
      ASSERT_TRUE(j.status.ok()) << j.status.error().to_string();
      EXPECT_EQ(testing::find_pattern_mismatch(j.data.get(), 4 * 4096, 9), SIZE_MAX);
    } else {
      ASSERT_FALSE(j.status.ok());
      EXPECT_EQ(j.status.code(), ErrorCode::OutOfBounds);
    }
  }
}

TEST(FileServingThread, StopFinishesTheIoInProgressAndDropsTheRest) {
  Fifo f;
  TempFile other;
  ASSERT_GE(f.rd, 0);
  ASSERT_GE(other.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.rd), ofd = static_cast<uint64_t>(other.fd);
  FileServer s;
  s.add({0, 1 << 20, fd});
  s.add({0, 1 << 20, ofd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  jobs.push_back({1, {Op::Read, 1, 0, fd, 0, 64}, s.acquire(), {}});
  t.submit(jobs);
  ASSERT_EQ(write(f.wr, "0123456789abcdef", 16), 16);
  ASSERT_TRUE(f.drained());  // the first job's read is under way
  // Queued behind it (writes, so that they cannot wait if they start before stop()).
  for (uint64_t i = 2; i < 5; ++i) {
    jobs.push_back({i, {Op::Write, 1, i, ofd, i * 4096, 4096}, s.acquire(), {}});
  }
  t.submit(jobs);
  EXPECT_EQ(s.in_use(), 4u);
  std::thread stopper([&] { t.stop(); });
  std::vector<char> rest(48, 'r');
  ASSERT_EQ(write(f.wr, rest.data(), rest.size()), 48);
  stopper.join();
  // Every job's staging is back and none is handed back; later ones are dropped.
  EXPECT_EQ(s.in_use(), 0u);
  EXPECT_TRUE(t.take_done().empty());
  jobs.push_back({9, {Op::Read, 1, 9, ofd, 0, 64}, s.acquire(), {}});
  t.submit(jobs);
  EXPECT_EQ(s.in_use(), 0u);
}

}  // namespace
}  // namespace kvbm::xfer::detail
