// Remote files, the pieces below the UCX backend: the wire form of chunk requests and
// replies (bytes from the network), and the owner's FileServer (served regions, staging
// buffers, reads and writes with errors that name the file and offset) and the thread
// that serves peers' chunks off the backend's lock.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "support/test_support.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_service.h"
#include "xfer/backends/ucx/file_serving_thread.h"
#include "xfer/backends/ucx/file_wire.h"
#include "xfer/ucx_common/staging_owed.h"
#include "xfer/ucx_common/staging_poll.h"
#include "xfer/ucx_common/staging_pool.h"
#include "xfer/ucx_common/staging_window.h"
#include "xfer/ucx_common/staging_wire.h"

namespace kvbm::xfer::detail {
namespace {

using kvbm::testing::Pipe;
using kvbm::testing::TempFile;
using ucx::FileService;
using namespace staging;

// The owner's staging buffers, as FileService makes them.
struct FilePool : Pool {
  explicit FilePool(size_t max = FileService::kDefaultMaxStaging)
      : Pool(max, kFileChunkBytes, 8, host_allocator()) {}
};

TEST(StagingWire, RequestsAndRepliesRoundTrip) {
  ChunkRequest req{Op::Write, MemType::File, 7, 3, 12, 4097, 65536, 0xfeedface12345678};
  auto r = decode_chunk_request(encode(req), kFileChunkBytes);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->op, Op::Write);
  EXPECT_EQ(r->space, MemType::File);
  EXPECT_EQ(r->xfer, 7u);
  EXPECT_EQ(r->seq, 3u);
  EXPECT_EQ(r->dev, 12u);
  EXPECT_EQ(r->addr, 4097u);
  EXPECT_EQ(r->len, 65536u);
  EXPECT_EQ(r->token, 0xfeedface12345678u);
  auto ok = decode_chunk_reply(encode(ChunkReply{7, 3, std::nullopt}));
  ASSERT_TRUE(ok.ok());
  EXPECT_FALSE(ok->error.has_value());
  EXPECT_FALSE(ok->busy);
  auto busy = decode_chunk_reply(encode(ChunkReply{7, 3, std::nullopt, true}));
  ASSERT_TRUE(busy.ok());
  EXPECT_TRUE(busy->busy);
  EXPECT_FALSE(busy->error.has_value());
  EXPECT_EQ(busy->seq, 3u);
  EXPECT_FALSE(busy->poll_end);
  auto bad = decode_chunk_reply(encode(ChunkReply{7, 3, ErrorCode::Io}));
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->error, ErrorCode::Io);
  // A poll's end: the token in xfer, the replies before it in seq.
  auto end = decode_chunk_reply(encode(ChunkReply{42, 5, std::nullopt, false, true}));
  ASSERT_TRUE(end.ok());
  EXPECT_TRUE(end->poll_end);
  EXPECT_FALSE(end->busy);
  EXPECT_FALSE(end->error.has_value());
  EXPECT_EQ(end->xfer, 42u);
  EXPECT_EQ(end->seq, 5u);
  auto poll = decode_chunk_poll(encode(ChunkPoll{0xabcdef0123456789}));
  ASSERT_TRUE(poll.ok()) << poll.error().to_string();
  EXPECT_EQ(poll->token, 0xabcdef0123456789u);
}

TEST(StagingWire, MalformedPollsAreRejected) {
  const std::string good = encode(ChunkPoll{7});
  EXPECT_ERROR(decode_chunk_poll(good.substr(0, good.size() - 1)), ErrorCode::Remote,
               "chunk poll header of 15 bytes, expected 16");
  std::string magic = good;
  magic[0] ^= 1;
  EXPECT_ERROR(decode_chunk_poll(magic), ErrorCode::Remote, "bad magic");
  std::string version = good;
  version[4] = 1;  // the wire before polls
  EXPECT_ERROR(decode_chunk_poll(version), ErrorCode::Remote, "wire version 1");
  // A request or a reply where a poll belongs, and the reverse.
  EXPECT_FALSE(
      decode_chunk_poll(encode(ChunkRequest{Op::Read, MemType::File, 1, 0, 3, 0, 1})).ok());
  EXPECT_FALSE(decode_chunk_poll(encode(ChunkReply{1, 0, std::nullopt})).ok());
  EXPECT_FALSE(decode_chunk_reply(good).ok());
  EXPECT_FALSE(decode_chunk_request(good, kFileChunkBytes).ok());
}

TEST(StagingWire, MalformedBytesAreRejected) {
  const uint64_t max = kFileChunkBytes;
  const std::string good = encode(ChunkRequest{Op::Read, MemType::File, 1, 0, 3, 0, 4096});
  EXPECT_ERROR(decode_chunk_request(good.substr(0, good.size() - 1), max), ErrorCode::Remote,
               "chunk request header of 55 bytes, expected 56");
  EXPECT_FALSE(decode_chunk_request(good + "x", max).ok());
  EXPECT_FALSE(decode_chunk_request("", max).ok());
  std::string magic = good;
  magic[0] ^= 1;
  EXPECT_ERROR(decode_chunk_request(magic, max), ErrorCode::Remote, "bad magic");
  std::string version = good;
  version[4] = 9;
  EXPECT_ERROR(decode_chunk_request(version, max), ErrorCode::Remote, "wire version 9");
  std::string op = good;
  op[6] = 5;
  EXPECT_ERROR(decode_chunk_request(op, max), ErrorCode::Remote, "unknown op 5");
  std::string space = good;
  space[7] = 3;
  EXPECT_ERROR(decode_chunk_request(space, max), ErrorCode::Remote, "unknown memory type 3");
  EXPECT_FALSE(
      decode_chunk_request(encode(ChunkRequest{Op::Read, MemType::File, 1, 0, 3, 0, 0}), max).ok());
  EXPECT_ERROR(
      decode_chunk_request(encode(ChunkRequest{Op::Read, MemType::File, 1, 0, 3, 0, max + 1}), max),
      ErrorCode::Remote, "a chunk holds 1 to 1048576");
  // The bound is the receiver's: a larger chunk fits a receiver with larger buffers.
  EXPECT_TRUE(decode_chunk_request(
                  encode(ChunkRequest{Op::Read, MemType::Vram, 1, 0, 3, 0, max + 1}), max + 1)
                  .ok());
  auto overflow =
      decode_chunk_request(encode(ChunkRequest{Op::Read, MemType::File, 1, 0, 3, ~0ull, 2}), max);
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.error().message.find("overflows"), std::string::npos);
  // A reply's error code beyond the known ones, and a request where a reply belongs.
  std::string code = encode(ChunkReply{1, 0, ErrorCode::Io});
  code[8] = 100;
  EXPECT_ERROR(decode_chunk_reply(code), ErrorCode::Remote, "unknown error code 100");
  code[8] = static_cast<char>(-4);  // below "no error" (-1), "busy" (-2), "poll end" (-3)
  code[9] = code[10] = code[11] = static_cast<char>(0xff);
  EXPECT_FALSE(decode_chunk_reply(code).ok());
  EXPECT_FALSE(decode_chunk_reply(good).ok());
}

// The initiator's window: in order, at most `window` in flight, regrown per chunk done;
// a "busy" chunk goes again first, after a doubling wait, with the window at one.
TEST(StagingWindow, KeepsTheWindowAndResendsBusyChunksFirst) {
  Window w(6, 2);
  const auto t0 = Window::Clock::now();
  ASSERT_TRUE(w.ready(t0));
  EXPECT_EQ(w.take(), 0u);
  EXPECT_EQ(w.take(), 1u);
  EXPECT_FALSE(w.ready(t0));  // two in flight
  EXPECT_TRUE(w.awaited(1));
  EXPECT_FALSE(w.awaited(2));  // never sent
  EXPECT_FALSE(w.awaited(99));
  EXPECT_EQ(w.busy(0, t0), Window::kResendFirst);
  EXPECT_FALSE(w.awaited(0));
  EXPECT_TRUE(w.has_resends());
  EXPECT_FALSE(w.ready(t0));  // the window is one, and chunk 1 fills it
  w.answer(1);
  EXPECT_FALSE(w.awaited(1));  // answered: a second reply is not asked for
  w.finish(1);
  EXPECT_FALSE(w.ready(t0));  // chunk 0 is not due yet, and nothing new goes before it
  const auto due = t0 + Window::kResendFirst;
  ASSERT_TRUE(w.ready(due));
  EXPECT_EQ(w.take(), 0u);  // the resent chunk first
  // Chunk 1 was done since: the target took one, so the wait starts over.
  EXPECT_EQ(w.busy(0, due), Window::kResendFirst);
  const auto due1 = due + Window::kResendFirst;
  EXPECT_EQ(w.take(), 0u);
  EXPECT_EQ(w.busy(0, due1), 2 * Window::kResendFirst);  // a second "busy" in a row
  EXPECT_FALSE(w.ready(due1));
  const auto due2 = due1 + 2 * Window::kResendFirst;
  ASSERT_TRUE(w.ready(due2));
  EXPECT_EQ(w.take(), 0u);
  w.answer(0);
  w.finish(0);
  EXPECT_FALSE(w.has_resends());
  EXPECT_EQ(w.take(), 2u);  // the window regrows to two
  EXPECT_EQ(w.take(), 3u);
  EXPECT_FALSE(w.ready(due2));
  EXPECT_EQ(w.in_flight(), 2u);
  for (uint64_t seq : {2u, 3u}) {
    w.answer(seq);
    w.finish(seq);
  }
  EXPECT_EQ(w.take(), 4u);
  EXPECT_EQ(w.take(), 5u);
  EXPECT_TRUE(w.all_sent());
  EXPECT_FALSE(w.ready(due2));
  EXPECT_FALSE(w.complete());
  for (uint64_t seq : {4u, 5u}) {
    w.answer(seq);
    w.finish(seq);
  }
  EXPECT_TRUE(w.complete());
  EXPECT_EQ(w.in_flight(), 0u);
}

TEST(StagingWindow, TheWaitAfterBusyIsCapped) {
  Window w(1, 4);
  auto t = Window::Clock::now();
  std::chrono::microseconds wait{0};
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(w.take(), 0u);
    wait = w.busy(0, t);
    t += wait;
  }
  EXPECT_EQ(wait, Window::kResendMax);
}

// Replies owed go only to a poll from their endpoint with their token, in order, once;
// an endpoint reused by another initiator (another token) gets none of them.
TEST(StagingOwed, AnswersOnlyThePollOfTheirEndpointAndToken) {
  OwedReplies owed;
  auto* ep1 = reinterpret_cast<ucp_ep_h>(0x1000);  // compared, never used
  auto* ep2 = reinterpret_cast<ucp_ep_h>(0x2000);
  const auto t0 = OwedReplies::Clock::now();
  auto owe = [&](ucp_ep_h ep, uint64_t token, uint64_t seq) {
    OwedReplies::Reply r;
    r.h = {9, seq, std::nullopt};
    owed.add(ep, token, std::move(r), t0);
  };
  owe(ep1, 7, 0);
  owe(ep1, 7, 1);
  owe(ep1, 8, 2);
  owe(ep2, 7, 3);
  EXPECT_EQ(owed.size(), 4u);
  std::vector<uint64_t> got;
  auto collect = [&](OwedReplies::Reply&& r) { got.push_back(r.h.seq); };
  EXPECT_EQ(owed.answer(ep1, 9, collect), 0u);  // a token owed nothing
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(owed.answer(ep1, 7, collect), 2u);
  EXPECT_EQ(got, (std::vector<uint64_t>{0, 1}));
  EXPECT_EQ(owed.answer(ep1, 7, collect), 0u);  // once
  EXPECT_EQ(owed.size(), 2u);
  owed.forget(ep1);  // the endpoint closes: what it was owed goes
  EXPECT_EQ(owed.answer(ep1, 8, collect), 0u);
  EXPECT_EQ(owed.answer(ep2, 7, collect), 1u);
  EXPECT_EQ(got.back(), 3u);
  EXPECT_EQ(owed.size(), 0u);
}

// An initiator that stops polling: its READ bytes go back to the pool after kHoldBytes
// (the reply becomes a Timeout error, still owed), everything after kForget; contact
// (a request) holds them on.
TEST(StagingOwed, UnpolledBytesGoBackToThePoolThenEverythingIsForgotten) {
  FilePool pool(4);
  OwedReplies owed;
  auto* ep = reinterpret_cast<ucp_ep_h>(0x1000);
  const auto t0 = OwedReplies::Clock::now();
  auto owe_read = [&](uint64_t token) {
    OwedReplies::Reply r;
    r.h = {1, token, std::nullopt};
    r.bytes = pool.acquire();
    ASSERT_TRUE(r.bytes);
    r.len = 4096;
    owed.add(ep, token, std::move(r), t0);
  };
  owe_read(1);
  owe_read(2);
  EXPECT_EQ(pool.in_use(), 2u);
  const auto hold = OwedReplies::kHoldBytes;
  EXPECT_EQ(owed.expire(t0 + hold - std::chrono::milliseconds(1)), 0u);
  owed.heard(ep, 2, t0 + hold / 2);  // token 2 is alive
  EXPECT_EQ(owed.expire(t0 + hold), 1u);
  EXPECT_EQ(pool.in_use(), 1u);
  std::vector<OwedReplies::Reply> got;
  auto collect = [&](OwedReplies::Reply&& r) { got.push_back(std::move(r)); };
  ASSERT_EQ(owed.answer(ep, 1, collect), 1u);
  EXPECT_EQ(got[0].h.error, ErrorCode::Timeout);
  EXPECT_FALSE(got[0].bytes);
  EXPECT_EQ(got[0].len, 0u);
  EXPECT_NE(got[0].error_text.find("did not poll for them within"), std::string::npos);
  EXPECT_EQ(owed.expire(t0 + hold / 2 + hold), 1u);  // token 2's bytes
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_EQ(owed.size(), 1u);
  EXPECT_EQ(owed.expire(t0 + hold / 2 + OwedReplies::kForget - std::chrono::milliseconds(1)), 0u);
  EXPECT_EQ(owed.size(), 1u);
  EXPECT_EQ(owed.expire(t0 + hold / 2 + OwedReplies::kForget), 1u);
  EXPECT_EQ(owed.size(), 0u);
}

// expire_due looks for what dead initiators left at most once per kExpiryPeriod: a call
// within the period after one that looked drops nothing, the first after it does.
TEST(StagingOwed, ExpiryRunsAtMostOncePerPeriod) {
  FilePool pool(2);
  OwedReplies owed;
  auto* ep = reinterpret_cast<ucp_ep_h>(0x1000);
  const auto t0 = OwedReplies::Clock::now();
  OwedReplies::Reply r;
  r.h = {1, 1, std::nullopt};
  r.bytes = pool.acquire();
  ASSERT_TRUE(r.bytes);
  r.len = 4096;
  owed.add(ep, 1, std::move(r), t0);
  const auto hold = OwedReplies::kHoldBytes;
  const std::chrono::milliseconds period = OwedReplies::kExpiryPeriod;
  EXPECT_EQ(owed.expire_due(t0 + hold - period / 2), 0u);  // looked: nothing due yet
  EXPECT_EQ(owed.expire_due(t0 + hold), 0u);               // due, but within the period: not looked
  EXPECT_EQ(pool.in_use(), 1u);
  EXPECT_EQ(owed.expire_due(t0 + hold - period / 2 + period), 1u);
  EXPECT_EQ(pool.in_use(), 0u);
}

// One poll out per connection; after replies the next may go at once, after an empty
// answer only after a wait that doubles up to its cap; a lost poll stops blocking.
TEST(StagingPoll, PacesOnePollPerConnection) {
  Polls polls;
  const auto t0 = Polls::Clock::now();
  ASSERT_TRUE(polls.take(5, t0));
  EXPECT_FALSE(polls.take(5, t0));  // one out
  EXPECT_TRUE(polls.take(6, t0));   // another connection's own
  polls.answered(5, 3, t0);
  EXPECT_TRUE(polls.take(5, t0));  // replies came: at once
  polls.answered(5, 0, t0);
  EXPECT_FALSE(polls.take(5, t0));
  ASSERT_TRUE(polls.take(5, t0 + Polls::kFirstWait));
  polls.answered(5, 0, t0);
  EXPECT_FALSE(polls.take(5, t0 + Polls::kFirstWait));
  ASSERT_TRUE(polls.take(5, t0 + 2 * Polls::kFirstWait));
  for (int i = 0; i < 20; ++i) {
    polls.answered(5, 0, t0);
    ASSERT_TRUE(polls.take(5, t0 + Polls::kMaxWait)) << "the wait is capped";
  }
  // Lost: unanswered for kLost, the next goes anyway.
  EXPECT_FALSE(polls.take(5, t0 + Polls::kMaxWait + std::chrono::microseconds(1)));
  EXPECT_TRUE(polls.take(5, t0 + Polls::kMaxWait + Polls::kLost));
  polls.failed(5);
  EXPECT_FALSE(polls.out(5));
  EXPECT_TRUE(polls.out(6));
  polls.prune();  // forgets 5 (none out), keeps 6
  EXPECT_FALSE(polls.take(6, t0));
  polls.answered(99, 1, t0);  // a stray answer touches nothing
  EXPECT_FALSE(polls.out(99));
}

// Requests out, per transfer and peer: polled for until each is answered (or its send
// failed), whatever became of the transfer; a peer that is gone is polled no more.
TEST(StagingPoll, OutstandingCountsRequestsPerTransferUntilAnswered) {
  struct Peer {};
  auto a = std::make_shared<Peer>(), b = std::make_shared<Peer>();
  Outstanding<Peer> out;
  EXPECT_TRUE(out.empty());
  out.sent(1, a);
  out.sent(1, a);
  out.sent(2, b);
  out.sent(3, a);
  auto peers = [&] {
    std::vector<const Peer*> seen;
    out.for_each_peer([&](const std::shared_ptr<Peer>& p) { seen.push_back(p.get()); });
    return seen;
  };
  EXPECT_EQ(peers(), (std::vector<const Peer*>{a.get(), b.get(), a.get()}));
  out.answered(1);
  out.answered(99);  // not asked: nothing changes
  EXPECT_EQ(peers().size(), 3u);
  out.answered(1);  // transfer 1's last
  EXPECT_EQ(peers(), (std::vector<const Peer*>{b.get(), a.get()}));
  out.drop_peer(a.get());
  EXPECT_EQ(peers(), (std::vector<const Peer*>{b.get()}));
  out.answered(2);
  EXPECT_TRUE(out.empty());
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

TEST(StagingPool, StagingIsBoundedAndReused) {
  FilePool s;
  EXPECT_EQ(s.max_buffers(), FileService::kDefaultMaxStaging);
  EXPECT_EQ(s.buffer_bytes(), kFileChunkBytes);
  std::vector<Buffer> held;
  for (size_t i = 0; i < FileService::kDefaultMaxStaging; ++i) {
    bool at_cap = true;
    held.push_back(s.acquire(&at_cap));
    ASSERT_TRUE(held.back());
    EXPECT_FALSE(at_cap);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(held.back().get()) % 4096, 0u);
  }
  bool at_cap = false;
  EXPECT_FALSE(s.acquire(&at_cap));  // READs wait; WRITEs are answered "busy"
  EXPECT_TRUE(at_cap);
  EXPECT_EQ(s.in_use(), FileService::kDefaultMaxStaging);
  held.pop_back();
  held.pop_back();
  EXPECT_EQ(s.in_use(), FileService::kDefaultMaxStaging - 2);
  Buffer again = s.acquire();  // from the free list
  EXPECT_TRUE(again);
  EXPECT_EQ(s.in_use(), FileService::kDefaultMaxStaging - 1);
}

TEST(StagingPool, TheCapIsThePoolsOwn) {
  FilePool s(2);
  EXPECT_EQ(s.max_buffers(), 2u);
  Buffer a = s.acquire(), b = s.acquire();
  ASSERT_TRUE(a && b);
  bool at_cap = false;
  EXPECT_FALSE(s.acquire(&at_cap));
  EXPECT_TRUE(at_cap);
  a.reset();
  Buffer c = s.acquire(&at_cap);
  EXPECT_TRUE(c);
  EXPECT_FALSE(at_cap);
}

// reserve() allocates the buffers kept free up front (the CUDA backend's pinned ones),
// and reports the allocator's error; acquire() then allocates nothing.
TEST(StagingPool, ReserveAllocatesUpFrontAndReportsFailure) {
  size_t allocs = 0, frees = 0;
  bool fail = false;
  Allocator counting{[&](size_t bytes) -> Result<char*> {
                       if (fail) return err(ErrorCode::AllocationFailed, "test alloc of ", bytes);
                       ++allocs;
                       return static_cast<char*>(std::malloc(bytes));
                     },
                     [&](char* p) {
                       ++frees;
                       std::free(p);
                     }};
  {
    Pool p(3, 4096, 3, counting);
    ASSERT_TRUE(p.reserve().ok());
    EXPECT_EQ(allocs, 3u);
    ASSERT_TRUE(p.reserve().ok());  // idempotent
    EXPECT_EQ(allocs, 3u);
    fail = true;
    Buffer a = p.acquire(), b = p.acquire(), c = p.acquire();
    EXPECT_TRUE(a && b && c);  // all from the reserve
    bool at_cap = false;
    EXPECT_FALSE(p.acquire(&at_cap));
    EXPECT_TRUE(at_cap);
  }
  EXPECT_EQ(frees, 3u);  // every buffer, once back, freed with the pool
  Pool empty(2, 4096, 2, counting);
  EXPECT_ERROR(empty.reserve(), ErrorCode::AllocationFailed, "test alloc of 4096");
  bool at_cap = true;
  EXPECT_FALSE(empty.acquire(&at_cap));  // short of memory, not at the cap
  EXPECT_FALSE(at_cap);
  EXPECT_EQ(empty.in_use(), 0u);
}

// Chunks waiting for a buffer start in order of arrival; at the cap the rest wait (a job
// needing none too, behind them); one whose buffer cannot be allocated is refused.
TEST(StagingPool, AdmitsWaitingChunksInOrderUntilTheCap) {
  bool fail = false;
  Allocator a{[&](size_t bytes) -> Result<char*> {
                if (fail) return err(ErrorCode::AllocationFailed, "no memory");
                return static_cast<char*>(std::malloc(bytes));
              },
              [](char* p) { std::free(p); }};
  Pool pool(2, 64, 2, a);
  struct Job {
    int id;
    bool needs;
  };
  std::deque<Job> waiting{{1, true}, {2, false}, {3, true}, {4, true}, {5, false}};
  std::vector<std::pair<int, Buffer>> started;
  std::vector<int> refused;
  auto run = [&] {
    admit(
        waiting, pool, [](const Job& j) { return j.needs; },
        [&](Job&& j, Buffer b) { started.emplace_back(j.id, std::move(b)); },
        [&](Job&& j) { refused.push_back(j.id); });
  };
  run();
  ASSERT_EQ(started.size(), 3u);  // 1, 2 (no buffer), 3; 4 waits at the cap, 5 behind it
  EXPECT_EQ(started[0].first, 1);
  EXPECT_TRUE(started[0].second);
  EXPECT_EQ(started[1].first, 2);
  EXPECT_FALSE(started[1].second);
  EXPECT_EQ(started[2].first, 3);
  EXPECT_EQ(waiting.size(), 2u);
  run();
  EXPECT_EQ(waiting.size(), 2u);   // still at the cap
  started.erase(started.begin());  // job 1's buffer comes back
  run();
  ASSERT_EQ(started.size(), 4u);
  EXPECT_EQ(started[2].first, 4);
  EXPECT_EQ(started[3].first, 5);
  EXPECT_TRUE(waiting.empty());
  started.clear();
  Pool fresh(2, 64, 0, a);  // one that must allocate, and cannot
  fail = true;
  waiting = {{6, true}, {7, false}};
  admit(
      waiting, fresh, [](const Job& j) { return j.needs; },
      [&](Job&& j, Buffer b) { started.emplace_back(j.id, std::move(b)); },
      [&](Job&& j) { refused.push_back(j.id); });
  EXPECT_EQ(refused, std::vector<int>{6});
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].first, 7);
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
FileJob file_job(Pool& s, uint64_t id, Op op, uint64_t fd, uint64_t offset, uint64_t len,
                 uint64_t seed = 0) {
  FileJob j{id, {op, MemType::File, 1, id, fd, offset, len}, s.acquire(), {}};
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
  FilePool pool;
  FileServer s;
  s.add({0, 20000, ufd});
  auto one = [&](Op op, uint64_t at_fd, uint64_t offset, uint64_t len) {
    std::vector<FileJob> jobs;
    jobs.push_back(file_job(pool, 0, op, at_fd, offset, len, 3));
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
  EXPECT_EQ(pool.in_use(), 3u);  // w, r and eof still hold theirs; refused jobs gave theirs back
}

TEST(FileServingThread, StreamsJobsGivingEachItsOwnStatus) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const uint64_t fd = static_cast<uint64_t>(f.fd);
  std::vector<char> data(3 * 4096);
  testing::fill_pattern(data.data(), data.size(), 5);
  ASSERT_EQ(pwrite(f.fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  FilePool pool;
  FileServer s;
  s.add({0, 8 * 4096, fd});
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(pool, 0, Op::Read, fd, 0, 4096));
  jobs.push_back(file_job(pool, 1, Op::Read, fd, 2 * 4096 + 100, 4096));  // past the file's end
  jobs.push_back(file_job(pool, 2, Op::Write, fd, 4096, 4096, 7));
  jobs.push_back(file_job(pool, 3, Op::Read, fd, 7 * 4096, 8192));  // past the region
  jobs.push_back(file_job(pool, 4, Op::Read, fd, 2 * 4096, 4096));
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
  FilePool pool;
  FileServer s;
  s.add({0, 4096, fd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(pool, 1, Op::Read, fd, 0, 64));
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
  FilePool pool;
  FileServer s;
  s.add({0, 1 << 20, fd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  for (uint64_t i = 0; i < 4; ++i) {
    FileJob j{i, {Op::Write, MemType::File, 1, i, fd, i * 4096, 4096}, pool.acquire(), {}};
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
  EXPECT_EQ(pool.in_use(), 0u);

  jobs.push_back({7, {Op::Read, MemType::File, 1, 0, fd, 0, 4 * 4096}, pool.acquire(), {}});
  jobs.push_back(
      {8, {Op::Read, MemType::File, 1, 1, fd + 1, 0, 4096}, pool.acquire(), {}});  // not served
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
  FilePool pool;
  FileServer s;
  s.add({0, 1 << 20, fd});
  s.add({0, 1 << 20, ofd});
  FileServingThread t(s);
  std::vector<FileJob> jobs;
  jobs.push_back(file_job(pool, 1, Op::Read, fd, 0, 64));
  t.submit(jobs);
  ASSERT_EQ(write(f.wr, "0123456789abcdef", 16), 16);
  ASSERT_TRUE(f.drained());  // the first job's read is under way
  // Submitted behind it: they start at its completion, before stop() returns.
  for (uint64_t i = 2; i < 5; ++i)
    jobs.push_back(file_job(pool, i, Op::Write, ofd, i * 4096, 4096, 11));
  t.submit(jobs);
  EXPECT_EQ(pool.in_use(), 4u);
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
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_TRUE(t.take_done().empty());
  std::vector<char> back(3 * 4096);
  ASSERT_EQ(pread(other.fd, back.data(), back.size(), 2 * 4096), 3 * 4096);
  EXPECT_EQ(testing::find_pattern_mismatch(back.data(), back.size(), 11, 2 * 4096), SIZE_MAX);
  jobs.push_back(file_job(pool, 9, Op::Read, ofd, 0, 64));
  t.submit(jobs);
  EXPECT_TRUE(jobs.empty());
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_TRUE(t.take_done().empty());
}

}  // namespace
}  // namespace kvbm::xfer::detail
