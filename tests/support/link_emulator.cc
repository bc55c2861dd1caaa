#include "support/link_emulator.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

namespace kvbm::testing {
namespace {

using Clock = std::chrono::steady_clock;

// A TAP device named `name` (frames without the packet-information prefix), non-blocking.
int open_tap(const std::string& name, std::string* why) {
  const int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *why = std::string("/dev/net/tun: ") + std::strerror(errno);
    return -1;
  }
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    *why = "TUNSETIFF " + name + ": " + std::strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

struct Frame {
  Clock::time_point due;
  std::vector<char> bytes;
};

}  // namespace

std::unique_ptr<LinkEmulator> LinkEmulator::create(const std::string& a, const std::string& b,
                                                   std::string* why) {
  const int fa = open_tap(a, why);
  if (fa < 0) return nullptr;
  const int fb = open_tap(b, why);
  if (fb < 0) {
    close(fa);
    return nullptr;
  }
  const int stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop < 0) {
    *why = std::string("eventfd: ") + std::strerror(errno);
    close(fa);
    close(fb);
    return nullptr;
  }
  return std::unique_ptr<LinkEmulator>(new LinkEmulator(fa, fb, stop));
}

LinkEmulator::LinkEmulator(int fd_a, int fd_b, int stop_fd)
    : fds_{fd_a, fd_b}, stop_fd_(stop_fd), thread_([this] { run(); }) {}

LinkEmulator::~LinkEmulator() {
  const uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
  thread_.join();
  close(fds_[0]);
  close(fds_[1]);
  close(stop_fd_);
}

void LinkEmulator::impair(std::chrono::microseconds delay, double loss) {
  delay_us_.store(delay.count(), std::memory_order_relaxed);
  loss_per_million_.store(static_cast<uint32_t>(loss * 1e6), std::memory_order_relaxed);
}

void LinkEmulator::run() {
  std::mt19937 random(20261206);
  std::uniform_int_distribution<uint32_t> per_million(0, 999999);
  std::deque<Frame> queued[2];  // queued[i]: frames read from fds_[i], for the other device
  std::vector<char> buf(65536);
  for (;;) {
    // Sleep until a frame is readable, the next queued one is due, or stop.
    int timeout_ms = 100;
    const auto now = Clock::now();
    for (const auto& q : queued) {
      if (q.empty()) continue;
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(q.front().due - now);
      timeout_ms = std::min<int>(timeout_ms, std::max<int64_t>(0, wait.count()));
    }
    pollfd p[3] = {{fds_[0], POLLIN, 0}, {fds_[1], POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(p, 3, timeout_ms) < 0 && errno != EINTR) return;
    if (p[2].revents != 0) return;
    for (int i = 0; i < 2; ++i) {
      if ((p[i].revents & POLLIN) == 0) continue;
      for (ssize_t n; (n = read(fds_[i], buf.data(), buf.size())) > 0;) {
        if (per_million(random) < loss_per_million_.load(std::memory_order_relaxed)) {
          dropped_.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        const auto delay = std::chrono::microseconds(delay_us_.load(std::memory_order_relaxed));
        queued[i].push_back({Clock::now() + delay, std::vector<char>(buf.data(), buf.data() + n)});
      }
    }
    // The same delay for every frame keeps each queue in order: send what is due.
    const auto sent_at = Clock::now();
    for (int i = 0; i < 2; ++i) {
      while (!queued[i].empty() && queued[i].front().due <= sent_at) {
        const Frame& f = queued[i].front();
        // A frame the device cannot take is lost, as on a wire.
        if (write(fds_[1 - i], f.bytes.data(), f.bytes.size()) > 0) {
          forwarded_.fetch_add(1, std::memory_order_relaxed);
        }
        queued[i].pop_front();
      }
    }
  }
}

}  // namespace kvbm::testing
