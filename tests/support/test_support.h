// Shared test helpers.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/pattern.h"
#include "common/sanitizers.h"
#include "kvbm/cuda.h"
#include "kvbm/log.h"
#include "kvbm/result.h"

namespace kvbm::testing {

// True in a build under AddressSanitizer or ThreadSanitizer (common/sanitizers.h): tests
// that repeat work for coverage do less there.
#if defined(KVBM_ASAN) || defined(KVBM_TSAN)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

// Skips the current test (with CUDA's reason) unless a GPU is usable.
#define KVBM_REQUIRE_GPU()                                                     \
  do {                                                                         \
    auto kvbm_gpu_count_ = ::kvbm::cuda_device_count();                        \
    if (!kvbm_gpu_count_) GTEST_SKIP() << kvbm_gpu_count_.error().to_string(); \
  } while (0)

// Asserts that a Result failed with `code` and that its message contains `needle`.
#define EXPECT_ERROR(result, error_code, needle)                                     \
  do {                                                                               \
    const auto& kvbm_r_ = (result);                                                  \
    ASSERT_FALSE(kvbm_r_.ok()) << "expected " << ::kvbm::to_string(error_code);      \
    EXPECT_EQ(kvbm_r_.code(), error_code) << kvbm_r_.error().to_string();            \
    EXPECT_NE(kvbm_r_.error().message.find(needle), std::string::npos)               \
        << "message '" << kvbm_r_.error().message << "' lacks '" << (needle) << "'"; \
  } while (0)

// A fresh directory under the temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// An unlinked temporary file (a fd only), closed on destruction; fd < 0 if mkstemp failed.
struct TempFile {
  TempFile();
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd = -1;
};

// The index of the first byte of [p, p + len) that is not `value`, or SIZE_MAX. Compares
// in blocks through memcmp, which sanitizers check per block rather than per byte.
size_t first_byte_not(const void* p, size_t len, unsigned char value);

// Moves `fd` to a number far above the ones in use and returns it (the old number closed;
// -1 on failure). Linux gives every new fd the lowest free number, so once a test closes the
// moved fd, no thread of the process (UCX's, io_uring's) gets that number back: a test that
// wants "a closed fd" can rely on it staying closed.
int move_fd_high(int fd);

// A pipe standing for a slow file: a read of `rd` waits until the test writes into `wr`.
// Both ends closed on destruction; -1 if pipe() failed.
struct Pipe {
  Pipe();
  ~Pipe();
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  // Waits (up to 30 s) until the reader has taken every byte written so far.
  bool drained() const;
  int rd = -1, wr = -1;
};

// Captures kvbm log lines for the lifetime of the object.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  std::vector<std::string> lines() const;
  bool contains(const std::string& needle) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
  LogSink previous_;
  LogLevel previous_level_;
};

using detail::fill_pattern;
using detail::find_pattern_mismatch;

}  // namespace kvbm::testing
