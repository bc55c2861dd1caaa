// A network link with delay and loss, in user space: two TAP devices whose Ethernet frames
// a thread of the test forwards to each other, each one held back by a fixed delay and a
// given fraction dropped (a seeded generator: a run drops the same frames each time).
// Kernels without sch_netem (tc's delay and loss) get the same faults from it. Needs root
// and /dev/net/tun. The devices vanish with the object.
//
// Thread safety: impair() and the counters may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

namespace kvbm::testing {

class LinkEmulator {
 public:
  // Creates TAP devices `a` and `b` (down, without addresses) and starts forwarding
  // between them; null with the reason in `why` where it cannot.
  static std::unique_ptr<LinkEmulator> create(const std::string& a, const std::string& b,
                                              std::string* why);
  ~LinkEmulator();
  LinkEmulator(const LinkEmulator&) = delete;
  LinkEmulator& operator=(const LinkEmulator&) = delete;

  // From now on each frame, either way, waits `delay` and is dropped with probability
  // `loss` (0 .. 1). Both 0 at first: a plain link.
  void impair(std::chrono::microseconds delay, double loss);
  uint64_t forwarded() const { return forwarded_.load(std::memory_order_relaxed); }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  LinkEmulator(int fd_a, int fd_b, int stop_fd);
  void run();

  int fds_[2];
  int stop_fd_;
  std::atomic<int64_t> delay_us_{0};
  std::atomic<uint32_t> loss_per_million_{0};
  std::atomic<uint64_t> forwarded_{0}, dropped_{0};
  std::thread thread_;
};

}  // namespace kvbm::testing
