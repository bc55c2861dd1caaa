// A child process of the kvbm command: optionally with its stdin and stdout on pipes,
// always reaped (killed first if needed) by the destructor, and never outliving us: it gets
// SIGKILL when the spawning thread dies (PR_SET_PDEATHSIG), and it leads a process group of
// its own that our SIGINT/SIGTERM handler kills (tools/cleanup.h). Its stdin is /dev/null
// unless piped. Not thread-safe: one owner drives it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::tools {

class Subprocess {
 public:
  struct Options {
    std::map<std::string, std::string> env;  // added to (or replacing in) ours
    bool pipe_stdin = false;
    bool pipe_stdout = false;   // otherwise stdout goes to /dev/null
    bool quiet_stderr = false;  // stderr to /dev/null instead of ours
  };
  // argv[0] is searched in PATH when it has no '/'. Io (naming the program) if it
  // cannot be started.
  static Result<Subprocess> spawn(const std::vector<std::string>& argv, const Options& options);

  Subprocess(Subprocess&& other) noexcept;
  Subprocess& operator=(Subprocess&&) = delete;
  Subprocess(const Subprocess&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Writes one line (newline appended); false if the child is gone.
  bool send(const std::string& line);
  // Closes the child's stdin (it sees EOF).
  void close_stdin();
  // One line of the child's stdout, without its newline; Timeout, or Io at EOF.
  Result<std::string> read_line(std::chrono::milliseconds timeout);
  // Everything until EOF; Timeout if the child keeps it open longer.
  Result<std::string> read_all(std::chrono::milliseconds timeout);
  // The exit code (128 + signal if killed by one); Timeout if still running.
  Result<int> wait(std::chrono::milliseconds timeout);
  void kill_now();

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  std::string buffer_;
  std::optional<int> exit_code_;
  int slot_ = -1;  // in the signal handler's table (tools/cleanup.h)
};

// The full path of `program` in PATH (or itself when it has a '/'), if executable.
std::optional<std::string> find_program(const std::string& program);

}  // namespace kvbm::tools
