#include "support/test_support.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace kvbm::testing {

TempFile::TempFile() {
  char path[] = "/tmp/kvbm_test_file_XXXXXX";
  fd = mkstemp(path);
  if (fd >= 0) unlink(path);
}

TempFile::~TempFile() {
  if (fd >= 0) close(fd);
}

size_t first_byte_not(const void* p, size_t len, unsigned char value) {
  constexpr size_t kBlock = 64 << 10;
  const std::vector<unsigned char> ref(kBlock, value);
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t at = 0; at < len; at += kBlock) {
    const size_t n = std::min(kBlock, len - at);
    if (std::memcmp(b + at, ref.data(), n) == 0) continue;
    for (size_t i = at; i < at + n; ++i) {
      if (b[i] != value) return i;
    }
  }
  return SIZE_MAX;
}

int move_fd_high(int fd) {
  rlimit lim{};
  if (fd < 0 || ::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < 256) return -1;
  // Near the top of the limit: the numbers below stay free for everything else.
  const rlim_t top = lim.rlim_cur == RLIM_INFINITY ? rlim_t{1} << 20 : lim.rlim_cur;
  const int high =
      ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(std::min<rlim_t>(top, 1 << 20) - 64));
  ::close(fd);
  return high;
}

Pipe::Pipe() {
  int p[2];
  if (pipe(p) == 0) {
    rd = p[0];
    wr = p[1];
  }
}

Pipe::~Pipe() {
  if (rd >= 0) close(rd);
  if (wr >= 0) close(wr);
}

bool Pipe::drained() const {
  for (int i = 0; i < 30000; ++i) {
    int n = -1;
    if (ioctl(wr, FIONREAD, &n) != 0) return false;
    if (n == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvbm-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

struct LogCapture::State {
  mutable std::mutex mu;
  std::vector<std::string> lines;
};

LogCapture::LogCapture() : state_(std::make_shared<State>()), previous_level_(log_level()) {
  auto state = state_;
  previous_ = set_log_sink([state](LogLevel, std::string_view msg) {
    std::lock_guard<std::mutex> lock(state->mu);
    state->lines.emplace_back(msg);
  });
  set_log_level(LogLevel::Debug);
}

LogCapture::~LogCapture() {
  set_log_sink(previous_);
  set_log_level(previous_level_);
}

std::vector<std::string> LogCapture::lines() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->lines;
}

bool LogCapture::contains(const std::string& needle) const {
  for (const auto& l : lines()) {
    if (l.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace kvbm::testing
