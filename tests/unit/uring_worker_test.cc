// The io_uring worker thread (src/common/uring_worker) that the POSIX backend, the transfer
// engine's file path and the UCX backend's file serving share: groups streamed with their
// own status, cancel() of a queued and of a running group, and destruction that finishes
// every group. Runs under ThreadSanitizer in CI.
#include "common/uring_worker.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace kvbm::detail {
namespace {

using kvbm::testing::Pipe;
using kvbm::testing::TempFile;

using namespace std::chrono_literals;
using Kind = FileOp::Kind;

std::unique_ptr<UringWorker> make_worker(unsigned depth = 8) {
  auto w = UringWorker::create(depth);
  if (!w) ADD_FAILURE() << w.error().to_string();
  return w ? std::move(*w) : nullptr;
}

// A Done that hands its status to a future.
struct Outcome {
  std::promise<Status> promise;
  std::future<Status> future = promise.get_future();
  UringWorker::Done done() {
    return [this](Status st) { promise.set_value(std::move(st)); };
  }
  std::optional<Status> get(std::chrono::milliseconds timeout = 30s) {
    if (future.wait_for(timeout) != std::future_status::ready) return std::nullopt;
    return future.get();
  }
};

TEST(UringWorker, QueueDepthIsValidated) {
  EXPECT_ERROR(UringWorker::create(0), ErrorCode::InvalidArgument, "queue_depth 0");
  EXPECT_ERROR(UringWorker::create(4097), ErrorCode::InvalidArgument, "queue_depth 4097");
}

TEST(UringWorker, GroupsEndEachWithItsOwnStatus) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  auto worker = make_worker();
  ASSERT_TRUE(worker);
  std::vector<char> data(64 * 1024), back(data.size()), past(4096);
  kvbm::testing::fill_pattern(data.data(), data.size(), 21);
  // Many small writes in one group, then a read of them back, then a read past the end.
  std::vector<FileOp> writes;
  for (size_t at = 0; at < data.size(); at += 4096) {
    writes.push_back({Kind::Write, f.fd, at, data.data() + at, 4096});
  }
  Outcome w;
  worker->submit(writes, w.done());
  auto wst = w.get();
  ASSERT_TRUE(wst.has_value()) << "the write group never ended";
  ASSERT_TRUE(wst->ok()) << wst->error().to_string();
  const FileOp read{Kind::Read, f.fd, 0, back.data(), back.size()};
  const FileOp eof{Kind::Read, f.fd, data.size() - 100, past.data(), past.size()};
  Outcome r, e;
  worker->submit({&read, 1}, r.done());
  worker->submit({&eof, 1}, e.done());
  auto rst = r.get();
  auto est = e.get();
  ASSERT_TRUE(rst.has_value() && est.has_value());
  ASSERT_TRUE(rst->ok()) << rst->error().to_string();
  EXPECT_EQ(back, data);
  EXPECT_ERROR(*est, ErrorCode::Io, "end of file");
  EXPECT_NE(est->error().message.find("offset " + std::to_string(data.size() - 100)),
            std::string::npos)
      << est->error().message;
}

TEST(UringWorker, AGroupTheRingRefusesEndsWithItsError) {
  auto worker = make_worker();
  ASSERT_TRUE(worker);
  TempFile f;
  ASSERT_GE(f.fd, 0);
  const int closed = dup(f.fd);
  ASSERT_GE(closed, 0);
  close(closed);
  char buf[16];
  const FileOp op{Kind::Read, closed, 0, buf, sizeof buf};
  Outcome o;
  worker->submit({&op, 1}, o.done());
  auto st = o.get();
  ASSERT_TRUE(st.has_value());
  EXPECT_ERROR(*st, ErrorCode::Io, "fd " + std::to_string(closed));
}

TEST(UringWorker, CancelTakesAQueuedGroupOutAndWaitsForARunningOne) {
  Pipe p;
  TempFile f;
  ASSERT_GE(p.rd, 0);
  ASSERT_GE(f.fd, 0);
  auto worker = make_worker();
  ASSERT_TRUE(worker);
  char got[64] = {};
  const FileOp slow{Kind::Read, p.rd, 0, got, sizeof got};
  std::atomic<bool> slow_done{false};
  const uint64_t running = worker->submit({&slow, 1}, [&](Status st) {
    EXPECT_TRUE(st.ok()) << st.error().to_string();
    slow_done = true;
  });
  ASSERT_EQ(write(p.wr, "0123456789abcdef", 16), 16);
  ASSERT_TRUE(p.drained());           // the read is under way, its short first part resubmitted
  std::this_thread::sleep_for(50ms);  // and the worker back in the kernel, waiting
  // Submitted now, it stays queued until the read ends: cancel() takes it out.
  char buf[4096] = {};
  const FileOp queued{Kind::Write, f.fd, 0, buf, sizeof buf};
  std::atomic<bool> queued_ran{false};
  const uint64_t ticket = worker->submit({&queued, 1}, [&](Status) { queued_ran = true; });
  worker->cancel(ticket);
  // cancel() of the running read returns only after its Done.
  std::atomic<bool> cancelled{false};
  std::thread canceller([&] {
    worker->cancel(running);
    cancelled = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(cancelled.load());
  std::vector<char> rest(48, 'r');
  ASSERT_EQ(write(p.wr, rest.data(), rest.size()), 48);
  canceller.join();
  EXPECT_TRUE(slow_done.load());
  worker.reset();  // finishes every group still submitted: none
  EXPECT_FALSE(queued_ran.load());
  EXPECT_EQ(std::string(got, 16), "0123456789abcdef");
  struct stat st {};
  ASSERT_EQ(fstat(f.fd, &st), 0);
  EXPECT_EQ(st.st_size, 0) << "the cancelled write ran";
  // Unknown and finished tickets return at once.
  auto again = make_worker();
  ASSERT_TRUE(again);
  again->cancel(12345);
}

TEST(UringWorker, DestructionFinishesEveryGroupSubmitted) {
  Pipe p;
  TempFile f;
  ASSERT_GE(p.rd, 0);
  ASSERT_GE(f.fd, 0);
  auto worker = make_worker(2);
  ASSERT_TRUE(worker);
  char got[32] = {};
  const FileOp slow{Kind::Read, p.rd, 0, got, sizeof got};
  std::atomic<int> ended{0};
  worker->submit({&slow, 1}, [&](Status st) {
    EXPECT_TRUE(st.ok()) << st.error().to_string();
    ++ended;
  });
  ASSERT_EQ(write(p.wr, "abcd", 4), 4);
  ASSERT_TRUE(p.drained());
  std::vector<char> data(8 * 4096, 'w');
  std::vector<FileOp> ops;
  for (size_t i = 0; i < 8; ++i)
    ops.push_back({Kind::Write, f.fd, i * 4096, &data[i * 4096], 4096});
  for (size_t i = 0; i < 8; ++i) {
    worker->submit({&ops[i], 1}, [&](Status st) {
      EXPECT_TRUE(st.ok()) << st.error().to_string();
      ++ended;
    });
  }
  std::thread writer([&] {
    std::this_thread::sleep_for(50ms);
    std::vector<char> rest(28, 'z');
    EXPECT_EQ(write(p.wr, rest.data(), rest.size()), 28);
  });
  worker.reset();
  writer.join();
  EXPECT_EQ(ended.load(), 9);
  struct stat st {};
  ASSERT_EQ(fstat(f.fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
}

TEST(UringWorker, ManyThreadsSubmitAndCancelAtOnce) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  auto worker = make_worker(16);
  ASSERT_TRUE(worker);
  constexpr int kThreads = 8, kGroups = 50;
  std::vector<std::vector<char>> bufs(kThreads, std::vector<char>(4096));
  std::atomic<int> ok{0}, ran{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::memset(bufs[t].data(), 'a' + t, 4096);
      const FileOp op{Kind::Write, f.fd, static_cast<uint64_t>(t) * 4096, bufs[t].data(), 4096};
      for (int i = 0; i < kGroups; ++i) {
        std::atomic<bool> done{false};
        const uint64_t ticket = worker->submit({&op, 1}, [&](Status st) {
          if (st) ++ok;
          ++ran;
          done = true;
        });
        // Every other group is cancelled: out of the queue, or waited for.
        if (i % 2 == 1) {
          worker->cancel(ticket);
        } else {
          while (!done.load()) std::this_thread::yield();
          worker->cancel(ticket);  // done: returns at once
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  worker.reset();
  EXPECT_EQ(ok.load(), ran.load());
  EXPECT_GE(ran.load(), kThreads * kGroups / 2);
  for (int t = 0; t < kThreads; ++t) {
    char b[4096];
    ASSERT_EQ(pread(f.fd, b, sizeof b, static_cast<off_t>(t) * 4096), 4096);
    EXPECT_EQ(b[0], 'a' + t);
    EXPECT_EQ(b[4095], 'a' + t);
  }
}

}  // namespace
}  // namespace kvbm::detail
