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

// Runs four tasks that each wait for all four to have started, and returns how many saw
// them all: four only if the pool's three threads and the caller ran them at the same time
// (each gives up after 10 s).
int tasks_that_saw_all_four(TaskPool& pool) {
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
  return saw_all.load();
}

TEST(TaskPool, TasksRunInParallel) {
  TaskPool pool(3);
  EXPECT_EQ(tasks_that_saw_all_four(pool), 4);
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

// With a spin time, threads poll for the next call before they sleep: calls back to back
// and calls after the threads went to sleep (the spin long over) all run every task.
TEST(TaskPool, SpinningThreadsServeCallsBackToBackAndAfterSleeping) {
  TaskPool pool(2, 2ms);
  std::atomic<size_t> sum{0};
  for (int round = 0; round < 3; ++round) {
    for (int call = 0; call < 200; ++call) pool.run(3, [&](size_t i) { sum += i + 1; });
    std::this_thread::sleep_for(20ms);  // the threads stop spinning and sleep
  }
  EXPECT_EQ(sum.load(), size_t{3 * 200 * 6});
}

// Tasks run on the pool's threads too, not only on the caller's, when they spin.
TEST(TaskPool, SpinningThreadsTakeTasks) {
  TaskPool pool(3, 1s);
  EXPECT_EQ(tasks_that_saw_all_four(pool), 4);
  EXPECT_EQ(tasks_that_saw_all_four(pool), 4) << "a second call, the threads still spinning";
}

TEST(TaskPool, TryRunRunsNothingWhileAnotherCallIsInProgress) {
  TaskPool pool(1, 1ms);
  std::mutex mu;
  std::condition_variable cv;
  bool inside = false, release = false;
  std::thread first([&] {
    pool.run(1, [&](size_t) {
      std::unique_lock<std::mutex> lock(mu);
      inside = true;
      cv.notify_all();
      cv.wait_for(lock, 10s, [&] { return release; });
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return inside; }));
  }
  std::atomic<int> calls{0};
  EXPECT_FALSE(pool.try_run(2, [&](size_t) { ++calls; }));
  EXPECT_EQ(calls.load(), 0);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  first.join();
  EXPECT_TRUE(pool.try_run(2, [&](size_t) { ++calls; }));
  EXPECT_EQ(calls.load(), 2);
  EXPECT_TRUE(pool.try_run(0, [&](size_t) { ++calls; }));
  EXPECT_EQ(calls.load(), 2);
}

// Threads still spinning (for up to a minute here) leave at once when the pool goes.
TEST(TaskPool, DestructionStopsSpinningThreads) {
  const auto t0 = std::chrono::steady_clock::now();
  {
    TaskPool pool(2, std::chrono::minutes(1));
    std::atomic<int> calls{0};
    pool.run(3, [&](size_t) { ++calls; });
    EXPECT_EQ(calls.load(), 3);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);
}

}  // namespace
}  // namespace kvbm::detail
