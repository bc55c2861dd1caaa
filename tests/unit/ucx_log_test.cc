// Where UCX's own messages go (src/xfer/ucx_common): stderr, so that an application's
// stdout (a `kvbm ... --json` document) never carries them; a UCX_LOG_FILE the user set
// is left alone. Each test runs in its own process (one ctest entry each), so the
// once-per-process routing starts fresh.
#include <gtest/gtest.h>
#include <ucs/config/global_opts.h>
#include <ucs/debug/log_def.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail {
namespace {

// What an error logged by UCX wrote to stdout and to stderr.
struct Captured {
  std::string out, err;
};

std::string read_all(FILE* f) {
  std::string s;
  std::rewind(f);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) s.append(buf, n);
  return s;
}

Captured log_an_error_from_ucx() {
  std::fflush(stdout);
  std::fflush(stderr);
  const int saved_out = ::dup(1), saved_err = ::dup(2);
  FILE* out = std::tmpfile();
  FILE* err = std::tmpfile();
  ::dup2(::fileno(out), 1);
  ::dup2(::fileno(err), 2);
  route_ucx_log_to_stderr();
  ucs_error("kvbm log probe %d", 42);
  std::fflush(stdout);
  std::fflush(stderr);
  ::dup2(saved_out, 1);
  ::dup2(saved_err, 2);
  ::close(saved_out);
  ::close(saved_err);
  Captured c{read_all(out), read_all(err)};
  std::fclose(out);
  std::fclose(err);
  return c;
}

TEST(UcxLog, GoesToStderrNeverStdout) {
  ::unsetenv("UCX_LOG_FILE");
  Captured c = log_an_error_from_ucx();
  EXPECT_EQ(c.out.find("kvbm log probe"), std::string::npos) << "stdout: " << c.out;
  EXPECT_NE(c.err.find("UCX ERROR"), std::string::npos) << "stderr: " << c.err;
  EXPECT_NE(c.err.find("ucx_log_test.cc"), std::string::npos) << "stderr: " << c.err;
  EXPECT_NE(c.err.find("kvbm log probe 42\n"), std::string::npos) << "stderr: " << c.err;
}

TEST(UcxLog, AUserChosenLogFileIsLeftAlone) {
  // UCX opened its log stream when it loaded (stdout here, as nothing was set then); a
  // UCX_LOG_FILE set now stands for a user's choice, which kvbm must not override.
  // Routing happens once per process: after another test routed it, there is nothing
  // left to check here (ctest runs each test in a process of its own).
  if (ucs_log_num_handlers() > 1) GTEST_SKIP() << "UCX's log was already routed here";
  ::setenv("UCX_LOG_FILE", "stdout", 1);
  Captured c = log_an_error_from_ucx();
  EXPECT_NE(c.out.find("kvbm log probe 42"), std::string::npos) << "stdout: " << c.out;
  EXPECT_EQ(c.err.find("kvbm log probe"), std::string::npos) << "stderr: " << c.err;
}

}  // namespace
}  // namespace kvbm::xfer::detail
