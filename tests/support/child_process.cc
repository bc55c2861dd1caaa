#include "support/child_process.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace kvbm::testing {

ChildProcess::ChildProcess(std::vector<std::string> argv, std::map<std::string, std::string> env) {
  detail::Subprocess::Options options;
  options.env = std::move(env);
  options.pipe_stdin = true;
  options.pipe_stdout = true;
  options.die_with_parent = false;
  options.exit_grace = std::chrono::seconds(5);
  auto p = detail::Subprocess::spawn(argv, options);
  if (p) process_.emplace(std::move(*p));
}

bool ChildProcess::send(const std::string& line) {
  return process_ && process_->send(line);
}

std::optional<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
  if (!process_) return std::nullopt;
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    auto line = process_->read_line(std::max(left, std::chrono::milliseconds(0)));
    if (!line) return std::nullopt;
    // UCX logs to stdout ("[<time>] [<host>:<pid>:<thread>] file.c:N UCX ERROR ..."), so
    // a log line can come before a reply: pass it on to stderr, and read on.
    if (line->starts_with('[') && line->find(" UCX ") != std::string::npos) {
      std::fprintf(stderr, "child %d: %s\n", static_cast<int>(pid()), line->c_str());
      continue;
    }
    return *line;
  }
}

std::optional<std::string> ChildProcess::ask(const std::string& line,
                                             std::chrono::milliseconds timeout) {
  if (!send(line)) return std::nullopt;
  return read_line(timeout);
}

void ChildProcess::kill_now() {
  if (process_) process_->kill_now();
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  if (!process_) return std::nullopt;
  auto code = process_->wait(timeout);
  if (!code) return std::nullopt;
  return process_->term_signal() != 0 ? -process_->term_signal() : *code;
}

std::string helper_path(const std::string& name) {
  return (std::filesystem::canonical("/proc/self/exe").parent_path() / name).string();
}

}  // namespace kvbm::testing
