// A child process driven over pipes: the test writes command lines to its stdin and
// reads reply lines from its stdout. Used for the two-agent tests (tests/integration).
// The tests' face of common/subprocess.h (the one subprocess helper of tests and tools): a
// plain child of the test's process group; optional results instead of errors.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/subprocess.h"

namespace kvbm::testing {

class ChildProcess {
 public:
  // Starts `argv[0]` with the given arguments and extra environment variables.
  ChildProcess(std::vector<std::string> argv, std::map<std::string, std::string> env = {});
  ~ChildProcess() = default;  // closes stdin, waits 5 s, then kills the child; reaps it
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return process_.has_value(); }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  // Sends one line (a newline is appended).
  bool send(const std::string& line);
  // Reads one line, without its newline; nullopt on EOF or timeout. UCX's log lines
  // (UCX logs to stdout) are skipped and copied to stderr.
  std::optional<std::string> read_line(
      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // send() then read_line().
  std::optional<std::string> ask(const std::string& line,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void kill_now();  // SIGKILL
  // Waits for exit; returns the exit status (or -signal) or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  std::optional<detail::Subprocess> process_;
};

// Path of a helper program built next to the test binaries.
std::string helper_path(const std::string& name);

}  // namespace kvbm::testing
