// Remote files, the pieces below the UCX backend: the wire form of chunk requests and
// replies (bytes from the network), and the owner's FileServer (served regions, staging
// buffers, reads and writes with errors that name the file and offset) and the thread
// that serves peers' chunks off the backend's lock.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "support/test_support.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_serving_thread.h"
#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer::detail {
namespace {

using kvbm::testing::Pipe;
using kvbm::testing::TempFile;

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

TEST(FileServer, RemoveWaitsForEveryPinThenRefusesTheRegion) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  FileServer s;
  s.add({0, 4096, fd});
  EXPECT_ERROR(s.pin(fd, 4000, 100), ErrorCode::OutOfBounds, "offset 4000 len 100");
  auto a = s.pin(fd, 0, 64);
  auto b = s.pin(fd, 64, 64);
  ASSERT_TRUE(a.ok() && b.ok());
  std::optional<FileServer::Pin> first(std::move(*a)), second(std::move(*b));
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    s.remove({0, 4096, fd});
    removed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(removed.load());  // two pins hold it
  first.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(removed.load());  // one still does
  second.reset();
  remover.join();
  EXPECT_TRUE(removed.load());
  EXPECT_ERROR(s.pin(fd, 0, 64), ErrorCode::OutOfBounds, "not inside a FILE region");
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

// A job of `len` bytes at `offset` of `fd`, with a staging buffer: for a WRITE, holding
// the pattern `seed` from `offset`.
FileJob file_job(FileServer& s, uint64_t id, Op op, uint64_t fd, uint64_t offset, uint64_t len,
                 uint64_t seed = 0) {
  FileJob j{id, {op, 1, id, fd, offset, len}, s.acquire(), {}};
  if (j.data && op == Op::Write) testing::fill_pattern(j.data.get(), len, seed, offset);
  return j;
}

// Serves the jobs through a fresh serving thread: each one back, with its status, by id.
std::map<uint64_t, FileJob> serve_all(FileServer& s, std::vector<FileJob> jobs) {
  FileServingThread t(s);
  const size_t n = jobs.size();
  t.submit(jobs);
  std::map<uint64_t, FileJob> out;
  for (FileJob& j : wait_done(t, n)) out.emplace(j.id, std::move(j));
  EXPECT_EQ(out.size(), n) << "jobs never came back";
  return out;
}

TEST(FileServingThread, ReadsAndWritesWithErrorsNamingFdAndOffset) {
  char path[] = "/tmp/kvbm_file_server_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  const uint64_t ufd = static_cast<uint64_t>(fd);
  FileServer s;
  s.add({0, 20000, ufd});
  auto one = [&](Op op, uint64_t at_fd, uint64_t offset, uint64_t len) {
    std::vector<FileJob> jobs;
    jobs.push_back(file_job(s, 0, op, at_fd, offset, len, 3));
    auto done = serve_all(s, std::move(jobs));
    return done.empty() ? FileJob{} : std::move(done.begin()->second);
  };
  // Unaligned: through the buffered twin of the fd.
  FileJob w = one(Op::Write, ufd, 5, 10000);
  ASSERT_TRUE(w.status.ok()) << w.status.error().to_string();
  FileJob r = one(Op::Read, ufd, 5, 10000);
  ASSERT_TRUE(r.status.ok()) << r.status.error().to_string();
  EXPECT_EQ(testing::find_pattern_mismatch(r.data.get(), 10000, 3, 5), SIZE_MAX);
  FileJob eof = one(Op::Read, ufd, 9000, 4096);
  EXPECT_ERROR(eof.status, ErrorCode::Io, "offset 9000");
  EXPECT_NE(eof.status.error().message.find("end of file"), std::string::npos);
  close(fd);
  EXPECT_ERROR(one(Op::Read, ufd, 0, 16).status, ErrorCode::Io,
               "fd " + std::to_string(fd) + " offset 0");
  EXPECT_ERROR(one(Op::Read, uint64_t{1} << 40, 0, 16).status, ErrorCode::OutOfBounds,
               "not inside a FILE region");
  EXPECT_EQ(s.in_use(), 3u);  // w, r and eof still hold theirs; refused jobs gave theirs back
}

TEST(FileServingThread, StreamsJobsGivingEachItsOwnStatus) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  std::vector<char> data(3 * 4096);
  testing::fill_pattern(data.data(), data.size(), 5);
  ASSERT_EQ(pwrite(f.fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  FileServer s;
  s.add({0, 8 * 4096, fd});
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(s, 0, Op::Read, fd, 0, 4096));
  jobs.push_back(file_job(s, 1, Op::Read, fd, 2 * 4096 + 100, 4096));  // past the file's end
  jobs.push_back(file_job(s, 2, Op::Write, fd, 4096, 4096, 7));
  jobs.push_back(file_job(s, 3, Op::Read, fd, 7 * 4096, 8192));  // past the region
  jobs.push_back(file_job(s, 4, Op::Read, fd, 2 * 4096, 4096));
  auto done = serve_all(s, std::move(jobs));
  ASSERT_EQ(done.size(), 5u);
  EXPECT_TRUE(done[0].status.ok()) << done[0].status.error().to_string();
  EXPECT_ERROR(done[1].status, ErrorCode::Io, "offset 8292");
  EXPECT_TRUE(done[2].status.ok()) << done[2].status.error().to_string();
  EXPECT_ERROR(done[3].status, ErrorCode::OutOfBounds, "offset 28672 len 8192");
  EXPECT_TRUE(done[4].status.ok()) << done[4].status.error().to_string();
  EXPECT_EQ(testing::find_pattern_mismatch(done[0].data.get(), 4096, 5), SIZE_MAX);
  EXPECT_EQ(testing::find_pattern_mismatch(done[4].data.get(), 4096, 5, 2 * 4096), SIZE_MAX);
  std::vector<char> back(4096);
  ASSERT_EQ(pread(f.fd, back.data(), 4096, 4096), 4096);
  EXPECT_EQ(testing::find_pattern_mismatch(back.data(), 4096, 7, 4096), SIZE_MAX);
}

TEST(FileServingThread, RemoveWaitsForTheIoInProgressThenRefusesTheRegion) {
  Pipe f;
  ASSERT_GE(f.rd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.rd);
  FileServer s;
  s.add({0, 4096, fd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(s, 1, Op::Read, fd, 0, 64));
  t.submit(jobs);
  std::vector<char> sent(64, 'x');
  ASSERT_EQ(write(f.wr, sent.data(), 32), 32);
  ASSERT_TRUE(f.drained());  // the read is under way, waiting for the rest
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    s.remove({0, 4096, fd});
    removed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(removed.load());  // it cannot return before the read does
  ASSERT_EQ(write(f.wr, sent.data(), 32), 32);
  auto done = wait_done(t, 1);
  remover.join();
  EXPECT_TRUE(removed.load());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].status.ok()) << done[0].status.error().to_string();
  EXPECT_EQ(std::string(done[0].data.get(), 64), std::string(sent.begin(), sent.end()));
  EXPECT_ERROR(s.check(fd, 0, 64), ErrorCode::OutOfBounds, "not inside a FILE region");
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

TEST(FileServingThread, StopFinishesEveryJobSubmittedAndHandsNoneBack) {
  Pipe f;
  TempFile other;
  ASSERT_GE(f.rd, 0);
  ASSERT_GE(other.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.rd), ofd = static_cast<uint64_t>(other.fd);
  FileServer s;
  s.add({0, 1 << 20, fd});
  s.add({0, 1 << 20, ofd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(s, 1, Op::Read, fd, 0, 64));
  t.submit(jobs);
  ASSERT_EQ(write(f.wr, "0123456789abcdef", 16), 16);
  ASSERT_TRUE(f.drained());  // the first job's read is under way
  // Submitted behind it: they start at its completion, before stop() returns.
  for (uint64_t i = 2; i < 5; ++i)
    jobs.push_back(file_job(s, i, Op::Write, ofd, i * 4096, 4096, 11));
  t.submit(jobs);
  EXPECT_EQ(s.in_use(), 4u);
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    t.stop();
    stopped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(stopped.load());  // the read is still waiting for its bytes
  std::vector<char> rest(48, 'r');
  ASSERT_EQ(write(f.wr, rest.data(), rest.size()), 48);
  stopper.join();
  // Every job ran and its staging is back; none is handed back, and later ones are dropped.
  EXPECT_EQ(s.in_use(), 0u);
  EXPECT_TRUE(t.take_done().empty());
  std::vector<char> back(3 * 4096);
  ASSERT_EQ(pread(other.fd, back.data(), back.size(), 2 * 4096), 3 * 4096);
  EXPECT_EQ(testing::find_pattern_mismatch(back.data(), back.size(), 11, 2 * 4096), SIZE_MAX);
  jobs.push_back(file_job(s, 9, Op::Read, ofd, 0, 64));
  t.submit(jobs);
  EXPECT_TRUE(jobs.empty());
  EXPECT_EQ(s.in_use(), 0u);
  EXPECT_TRUE(t.take_done().empty());
}

}  // namespace
}  // namespace kvbm::xfer::detail
