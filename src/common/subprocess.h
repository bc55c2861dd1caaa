// A child process for the kvbm command and the tests (not part of the library's API): started
// from an argv and extra environment, its stdin and stdout optionally on pipes (else
// /dev/null), stderr ours unless quiet; always reaped by the destructor, which closes its
// stdin, waits `exit_grace` for it to end and SIGKILLs it otherwise.
//
// With die_with_parent (the command's children) it gets SIGKILL when the spawning thread
// dies (PR_SET_PDEATHSIG), leads a process group of its own, and starts with the default
// SIGINT/SIGTERM/SIGHUP/SIGPIPE handling; `track` then registers it, while every signal is
// blocked, with whatever kills such groups on a signal (tools/cleanup.h). Without it (the
// tests' peers) it is started by posix_spawn in our process group, as a plain child.
//
// Thread safety: none; one owner drives it. Errors name the program or the pid.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::detail {

class Subprocess {
 public:
  struct Options {
    std::map<std::string, std::string> env;  // added to (or replacing in) ours
    bool pipe_stdin = false;
    bool pipe_stdout = false;   // otherwise stdout goes to /dev/null
    bool quiet_stderr = false;  // stderr to /dev/null instead of ours
    bool die_with_parent = true;
    // With die_with_parent: called with every signal blocked once the child exists; returns
    // a slot that `untrack` releases when the child has been reaped.
    int (*track)(pid_t pgid) = nullptr;
    void (*untrack)(int slot) = nullptr;
    std::chrono::milliseconds exit_grace{2000};
  };
  // argv[0] is searched in PATH when it has no '/'. NotFound or Io (naming the program) if
  // it cannot be started; InvalidArgument for an empty argv.
  static Result<Subprocess> spawn(const std::vector<std::string>& argv, const Options& options);

  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&&) = delete;
  Subprocess(const Subprocess&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Writes one line (newline appended); false if the child is gone or stdin is not a pipe.
  bool send(const std::string& line);
  // Closes the child's stdin (it sees EOF).
  void close_stdin();
  // One line of the child's stdout, without its newline; Timeout, or Io at EOF.
  Result<std::string> read_line(std::chrono::milliseconds timeout);
  // Everything until EOF; Timeout if the child keeps it open longer.
  Result<std::string> read_all(std::chrono::milliseconds timeout);
  // The exit code (128 + signal if killed by one); Timeout if still running.
  Result<int> wait(std::chrono::milliseconds timeout);
  // The signal that ended it, once wait() saw it end by one; 0 otherwise.
  int term_signal() const { return term_signal_; }
  void kill_now();  // SIGKILL, unless already reaped

 private:
  Subprocess() = default;
  // Waits until `until` for output and appends what comes to buffer_: the bytes read, 0 at
  // the end of the output, nullopt when the time ran out.
  std::optional<size_t> read_more(std::chrono::steady_clock::time_point until);
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  std::string buffer_;
  std::optional<int> exit_code_;
  int term_signal_ = 0;
  int slot_ = -1;
  void (*untrack_)(int) = nullptr;
  std::chrono::milliseconds exit_grace_{2000};
};

// The full path of `program` in PATH (or itself when it has a '/'), if executable.
std::optional<std::string> find_program(const std::string& program);

}  // namespace kvbm::detail
