// The one subprocess helper of tests and tools (src/common/subprocess.h): both ways of
// starting a child, pipes, environment, exit codes and signals, and its errors.
#include "common/subprocess.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include "support/test_support.h"

namespace kvbm::detail {
namespace {

using namespace std::chrono_literals;

class SubprocessTest : public ::testing::TestWithParam<bool> {
 protected:
  Subprocess::Options options() const {
    Subprocess::Options o;
    o.die_with_parent = GetParam();
    return o;
  }
};

TEST_P(SubprocessTest, LinesBothWaysAndItsExitCode) {
  auto o = options();
  o.pipe_stdin = o.pipe_stdout = true;
  o.env["KVBM_SUBPROCESS_TEST"] = "from-env";
  auto p =
      Subprocess::spawn({"sh", "-c", "echo $KVBM_SUBPROCESS_TEST; read x; echo got $x; exit 3"}, o);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->read_line(30s).value_or("?"), "from-env");
  EXPECT_TRUE(p->send("ping"));
  EXPECT_EQ(p->read_line(30s).value_or("?"), "got ping");
  EXPECT_ERROR(p->read_line(30s), ErrorCode::Io, "closed its output");
  EXPECT_EQ(p->wait(30s).value_or(-1), 3);
  EXPECT_EQ(p->term_signal(), 0);
}

TEST_P(SubprocessTest, ReadAllUntilEofThenKilledBySignal) {
  auto o = options();
  o.pipe_stdout = true;
  auto p = Subprocess::spawn({"sh", "-c", "printf 'a\\nb'; exec >&-; exec sleep 600"}, o);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->read_all(30s).value_or("?"), "a\nb");
  EXPECT_ERROR(p->wait(0ms), ErrorCode::Timeout, "still running");
  // Linked: it leads a group of its own; plain: it is in ours.
  EXPECT_EQ(::getpgid(p->pid()), GetParam() ? p->pid() : ::getpgrp());
  p->kill_now();
  EXPECT_EQ(p->wait(30s).value_or(-1), 128 + SIGKILL);
  EXPECT_EQ(p->term_signal(), SIGKILL);
}

TEST_P(SubprocessTest, ErrorsNameTheProgram) {
  EXPECT_ERROR(Subprocess::spawn({"kvbm-no-such-program"}, options()), ErrorCode::NotFound,
               "'kvbm-no-such-program' not found");
  EXPECT_ERROR(Subprocess::spawn({}, options()), ErrorCode::InvalidArgument, "empty");
  auto p = Subprocess::spawn({"true"}, options());
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_ERROR(p->read_line(1s), ErrorCode::InvalidArgument, "is not a pipe");
  EXPECT_FALSE(p->send("x"));
}

INSTANTIATE_TEST_SUITE_P(Start, SubprocessTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Linked" : "Plain"; });

}  // namespace
}  // namespace kvbm::detail
