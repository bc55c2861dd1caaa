#include "common/task_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace kvbm::detail {
namespace {

using namespace std::chrono_literals;

TEST(TaskPool, RunsEveryTaskExactlyOnce) {
  for (size_t threads : {0, 1, 4}) {
    TaskPool pool(threads);
    for (size_t n : {0, 1, 7, 1000}) {
      std::vector<std::atomic<int>> calls(n);
      pool.run(n, [&](size_t i) { calls[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(calls[i].load(), 1)
            << "task " << i << " of " << n << ", " << threads << " threads";
      }
    }
  }
}

TEST(TaskPool, WithoutThreadsTheCallerRunsTheTasks) {
  TaskPool pool(0);
  const auto caller = std::this_thread::get_id();
  std::atomic<int> elsewhere{0};
  pool.run(5, [&](size_t) {
    if (std::this_thread::get_id() != caller) ++elsewhere;
  });
  EXPECT_EQ(elsewhere.load(), 0);
}

// Four tasks that each wait for all four to have started: they finish only if the pool's
// three threads and the caller run them at the same time (each gives up after 10 s).
TEST(TaskPool, TasksRunInParallel) {
  TaskPool pool(3);
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  std::atomic<int> saw_all{0};
  pool.run(4, [&](size_t) {
    std::unique_lock<std::mutex> lock(mu);
    ++started;
    cv.notify_all();
    if (cv.wait_for(lock, 10s, [&] { return started == 4; })) ++saw_all;
  });
  EXPECT_EQ(saw_all.load(), 4);
}

TEST(TaskPool, CallsFromSeveralThreadsTakeTurns) {
  TaskPool pool(2);
  std::atomic<size_t> sum{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) pool.run(10, [&](size_t i) { sum += i; });
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(sum.load(), size_t{4 * 50 * 45});
}

}  // namespace
}  // namespace kvbm::detail
