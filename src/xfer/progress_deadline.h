// When a request in flight has waited too long for its peer: AgentConfig::peer_timeout
// counted from the last time the backend reported a part of the request done (a get, a
// put, a file chunk), not from post(), so a large transfer that keeps moving over a slow
// link is not cut off, while one whose peer stopped answering fails within one timeout.
// A backend that reports no parts (progress() stays 0) gets the plain timeout from post().
//
// Not thread-safe: owned by one request, used under its lock.
#pragma once

#include <chrono>
#include <cstdint>

namespace kvbm::xfer::detail {

class ProgressDeadline {
 public:
  using Clock = std::chrono::steady_clock;

  // Starts the clock at `now`, with the backend request's progress count at that moment.
  void start(Clock::time_point now, std::chrono::milliseconds timeout, uint64_t progress) {
    timeout_ = timeout;
    deadline_ = now + timeout;
    progress_ = progress;
  }

  // Whether the timeout has passed without progress. Cheap before the deadline: callers
  // pass the progress lazily (`progress_now` is called only once the deadline is reached).
  template <typename ProgressFn>
  bool expired(Clock::time_point now, ProgressFn&& progress_now) {
    if (now < deadline_) return false;
    const uint64_t p = progress_now();
    if (p == progress_) return true;
    // Part of it completed since the clock last started: the peer answers; start again.
    progress_ = p;
    deadline_ = now + timeout_;
    return false;
  }

 private:
  std::chrono::milliseconds timeout_{0};
  Clock::time_point deadline_{};
  uint64_t progress_ = 0;
};

}  // namespace kvbm::xfer::detail
