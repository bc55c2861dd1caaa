#include "subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "cleanup.h"

extern char** environ;

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
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

namespace {

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

}  // namespace

Result<Subprocess> Subprocess::spawn(const std::vector<std::string>& argv, const Options& options) {
  if (argv.empty()) return err(ErrorCode::InvalidArgument, "empty command line");
  auto program = find_program(argv[0]);
  if (!program) return err(ErrorCode::NotFound, "program '", argv[0], "' not found");
  install_signal_cleanup();
  int to_child[2] = {-1, -1}, from_child[2] = {-1, -1};
  auto close_all = [&] {
    for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) {
      if (fd >= 0) close(fd);
    }
  };
  if ((options.pipe_stdin && pipe2(to_child, O_CLOEXEC) != 0) ||
      (options.pipe_stdout && pipe2(from_child, O_CLOEXEC) != 0)) {
    close_all();
    return err(ErrorCode::Io, "pipe for '", argv[0], "': ", std::strerror(errno));
  }

  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    if (options.env.count(kv.substr(0, kv.find('='))) == 0) envs.push_back(std::move(kv));
  }
  for (const auto& [k, v] : options.env) envs.push_back(k + "=" + v);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv, cenv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  // Signals wait until the child is registered for the handler to kill (and the child,
  // which shares our memory until exec, never runs our handler).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  volatile int exec_error = 0;
  const pid_t parent = getpid();
  const pid_t pid = vfork();
  if (pid == 0) {
    exec_child(parent, program->c_str(), cargv.data(), cenv.data(), to_child[0], from_child[1],
               options.quiet_stderr, &exec_error);
  }
  const int spawn_errno = errno;
  const int slot = pid > 0 ? kill_on_signal(pid) : -1;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0 || exec_error != 0) {
    if (pid > 0) waitpid(pid, nullptr, 0);
    forget_on_signal(slot);
    close_all();
    return err(ErrorCode::Io, "cannot start '", *program,
               "': ", std::strerror(pid < 0 ? spawn_errno : exec_error));
  }
  signal(SIGPIPE, SIG_IGN);  // a child that died must not kill us on send()
  Subprocess p;
  p.pid_ = pid;
  p.slot_ = slot;
  if (options.pipe_stdin) {
    close(to_child[0]);
    p.in_ = to_child[1];
  }
  if (options.pipe_stdout) {
    close(from_child[1]);
    p.out_ = from_child[0];
  }
  return p;
}

Subprocess::Subprocess(Subprocess&& o) noexcept
    : pid_(o.pid_),
      in_(o.in_),
      out_(o.out_),
      buffer_(std::move(o.buffer_)),
      exit_code_(o.exit_code_),
      slot_(o.slot_) {
  o.slot_ = -1;
  o.pid_ = -1;
  o.in_ = -1;
  o.out_ = -1;
}

Subprocess::~Subprocess() {
  close_stdin();
  if (pid_ > 0 && !exit_code_) {
    if (!wait(std::chrono::seconds(2))) {
      kill_now();
      (void)wait(std::chrono::seconds(5));
    }
  }
  if (out_ >= 0) close(out_);
  forget_on_signal(slot_);
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

Result<std::string> Subprocess::read_line(std::chrono::milliseconds timeout) {
  if (out_ < 0) return err(ErrorCode::InvalidArgument, "stdout of pid ", pid_, " is not a pipe");
  const auto until = Clock::now() + timeout;
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    pollfd p{out_, POLLIN, 0};
    int r = poll(&p, 1, remaining_ms(until));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      return err(ErrorCode::Timeout, "no line from pid ", pid_, " within ", timeout.count(), " ms");
    }
    char chunk[4096];
    ssize_t n = read(out_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return err(ErrorCode::Io, "pid ", pid_, " closed its output");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

Result<std::string> Subprocess::read_all(std::chrono::milliseconds timeout) {
  if (out_ < 0) return err(ErrorCode::InvalidArgument, "stdout of pid ", pid_, " is not a pipe");
  const auto until = Clock::now() + timeout;
  for (;;) {
    pollfd p{out_, POLLIN, 0};
    int r = poll(&p, 1, remaining_ms(until));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      return err(ErrorCode::Timeout, "pid ", pid_, " still writing after ", timeout.count(), " ms");
    }
    char chunk[4096];
    ssize_t n = read(out_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer_.append(chunk, static_cast<size_t>(n));
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
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
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

}  // namespace kvbm::tools
