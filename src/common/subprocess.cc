#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

extern char** environ;

namespace kvbm::detail {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// Our environment with `extra` added or replacing.
std::vector<std::string> child_environment(const std::map<std::string, std::string>& extra) {
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    if (extra.count(kv.substr(0, kv.find('='))) == 0) envs.push_back(std::move(kv));
  }
  for (const auto& [k, v] : extra) envs.push_back(k + "=" + v);
  return envs;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// The pipes of one spawn: [0] read ends, [1] write ends; -1 where not piped.
struct Pipes {
  int to_child[2] = {-1, -1};
  int from_child[2] = {-1, -1};
  void close_all() {
    for (int* fd : {&to_child[0], &to_child[1], &from_child[0], &from_child[1]}) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
  }
};

// What the child does between vfork() and exec: only async-signal-safe calls, nothing that
// touches memory the parent still uses (the child borrows it until exec). Sets *error and
// exits 127 if it cannot exec.
[[noreturn]] void exec_child(pid_t parent, const char* program, char* const* argv,
                             char* const* envp, int in_fd, int out_fd, bool quiet_stderr,
                             volatile int* error) {
  // Dies with us (SIGKILL included), in a group of its own that our signal handler kills.
  // The death signal follows the thread that spawned it: spawn from a thread that lives as
  // long as the child (the commands spawn from main's).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);  // we died before prctl took effect
  ::setpgid(0, 0);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::sigaction(sig, &dfl, nullptr);
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  ::dup2(in_fd >= 0 ? in_fd : null_fd, STDIN_FILENO);  // the terminal is not the child's
  ::dup2(out_fd >= 0 ? out_fd : null_fd, STDOUT_FILENO);
  if (quiet_stderr) ::dup2(null_fd, STDERR_FILENO);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(program, argv, envp);
  *error = errno;
  ::_exit(127);
}

// The die_with_parent start: the pid, or -errno; *slot from options.track.
pid_t start_linked(const std::string& program, char* const* argv, char* const* envp,
                   const Pipes& pipes, const Subprocess::Options& options, int* slot) {
  // Signals wait until the child is registered for the handler to kill (and the child,
  // which shares our memory until exec, never runs our handler).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  volatile int exec_error = 0;
  const pid_t parent = getpid();
  const pid_t pid = vfork();
  if (pid == 0) {
    exec_child(parent, program.c_str(), argv, envp, pipes.to_child[0], pipes.from_child[1],
               options.quiet_stderr, &exec_error);
  }
  const int spawn_errno = errno;
  *slot = pid > 0 && options.track != nullptr ? options.track(pid) : -1;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid > 0 && exec_error != 0) {
    waitpid(pid, nullptr, 0);
    if (*slot >= 0 && options.untrack != nullptr) options.untrack(*slot);
    *slot = -1;
    return -exec_error;
  }
  return pid < 0 ? -spawn_errno : pid;
}

// The plain start: a child of our process group; the pid, or -errno.
pid_t start_plain(const std::string& program, char* const* argv, char* const* envp,
                  const Pipes& pipes, const Subprocess::Options& options) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  auto to = [&](int fd, int target) {
    if (fd >= 0) {
      posix_spawn_file_actions_adddup2(&actions, fd, target);
    } else {
      posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_RDWR, 0);
    }
  };
  to(pipes.to_child[0], STDIN_FILENO);
  to(pipes.from_child[1], STDOUT_FILENO);
  if (options.quiet_stderr) to(-1, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv, envp);
  posix_spawn_file_actions_destroy(&actions);
  return rc != 0 ? -rc : pid;
}

}  // namespace

std::optional<std::string> find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    if (access(program.c_str(), X_OK) == 0) return program;
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    std::string full = (dir.empty() ? "." : dir) + "/" + program;
    if (access(full.c_str(), X_OK) == 0) return full;
  }
  return std::nullopt;
}

Result<Subprocess> Subprocess::spawn(const std::vector<std::string>& argv, const Options& options) {
  if (argv.empty()) return err(ErrorCode::InvalidArgument, "empty command line");
  auto program = find_program(argv[0]);
  if (!program) return err(ErrorCode::NotFound, "program '", argv[0], "' not found");
  Pipes pipes;
  if ((options.pipe_stdin && pipe2(pipes.to_child, O_CLOEXEC) != 0) ||
      (options.pipe_stdout && pipe2(pipes.from_child, O_CLOEXEC) != 0)) {
    const int e = errno;
    pipes.close_all();
    return err(ErrorCode::Io, "pipe for '", argv[0], "': ", std::strerror(e));
  }
  std::vector<std::string> args = argv;
  std::vector<std::string> envs = child_environment(options.env);
  std::vector<char*> cargv = c_strings(args), cenv = c_strings(envs);
  int slot = -1;
  const pid_t pid = options.die_with_parent
                        ? start_linked(*program, cargv.data(), cenv.data(), pipes, options, &slot)
                        : start_plain(*program, cargv.data(), cenv.data(), pipes, options);
  if (pid < 0) {
    pipes.close_all();
    return err(ErrorCode::Io, "cannot start '", *program, "': ", std::strerror(-pid));
  }
  signal(SIGPIPE, SIG_IGN);  // a child that died must not kill us on send()
  Subprocess p;
  p.pid_ = pid;
  p.slot_ = slot;
  p.untrack_ = options.untrack;
  p.exit_grace_ = options.exit_grace;
  if (pipes.to_child[0] >= 0) close(pipes.to_child[0]);
  if (pipes.from_child[1] >= 0) close(pipes.from_child[1]);
  p.in_ = pipes.to_child[1];
  p.out_ = pipes.from_child[0];
  return p;
}

Subprocess::Subprocess(Subprocess&& o) noexcept
    : pid_(o.pid_),
      in_(o.in_),
      out_(o.out_),
      buffer_(std::move(o.buffer_)),
      exit_code_(o.exit_code_),
      term_signal_(o.term_signal_),
      slot_(o.slot_),
      untrack_(o.untrack_),
      exit_grace_(o.exit_grace_) {
  o.slot_ = -1;
  o.pid_ = -1;
  o.in_ = -1;
  o.out_ = -1;
}

Subprocess::~Subprocess() {
  close_stdin();
  if (pid_ > 0 && !exit_code_) {
    if (!wait(exit_grace_)) {
      kill_now();
      (void)wait(std::chrono::seconds(5));
    }
  }
  if (out_ >= 0) close(out_);
  if (slot_ >= 0 && untrack_ != nullptr) untrack_(slot_);
}

bool Subprocess::send(const std::string& line) {
  if (in_ < 0) return false;
  std::string data = line + "\n";
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(in_, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

void Subprocess::close_stdin() {
  if (in_ >= 0) close(in_);
  in_ = -1;
}

std::optional<size_t> Subprocess::read_more(Clock::time_point until) {
  for (;;) {
    pollfd p{out_, POLLIN, 0};
    int r = poll(&p, 1, remaining_ms(until));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return std::nullopt;
    char chunk[4096];
    ssize_t n = read(out_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    buffer_.append(chunk, static_cast<size_t>(n));
    return static_cast<size_t>(n);
  }
}

Result<std::string> Subprocess::read_line(std::chrono::milliseconds timeout) {
  if (out_ < 0) return err(ErrorCode::InvalidArgument, "stdout of pid ", pid_, " is not a pipe");
  const auto until = Clock::now() + timeout;
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    const auto n = read_more(until);
    if (!n) {
      return err(ErrorCode::Timeout, "no line from pid ", pid_, " within ", timeout.count(), " ms");
    }
    if (*n == 0) return err(ErrorCode::Io, "pid ", pid_, " closed its output");
  }
}

Result<std::string> Subprocess::read_all(std::chrono::milliseconds timeout) {
  if (out_ < 0) return err(ErrorCode::InvalidArgument, "stdout of pid ", pid_, " is not a pipe");
  const auto until = Clock::now() + timeout;
  for (;;) {
    const auto n = read_more(until);
    if (!n) {
      return err(ErrorCode::Timeout, "pid ", pid_, " still writing after ", timeout.count(), " ms");
    }
    if (*n == 0) break;
  }
  std::string all;
  all.swap(buffer_);
  return all;
}

Result<int> Subprocess::wait(std::chrono::milliseconds timeout) {
  if (exit_code_) return *exit_code_;
  if (pid_ <= 0) return err(ErrorCode::InvalidArgument, "no process");
  const auto until = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      term_signal_ = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + term_signal_;
      return *exit_code_;
    }
    if (r < 0 && errno != EINTR)
      return err(ErrorCode::Io, "waitpid ", pid_, ": ", std::strerror(errno));
    if (Clock::now() >= until) {
      return err(ErrorCode::Timeout, "pid ", pid_, " still running after ", timeout.count(), " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void Subprocess::kill_now() {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, SIGKILL);
}

}  // namespace kvbm::detail
