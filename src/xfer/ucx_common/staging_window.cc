#include "xfer/ucx_common/staging_window.h"

#include <algorithm>

namespace kvbm::xfer::detail::staging {

bool Window::ready(Clock::time_point now) const {
  if (in_flight_ >= window_) return false;
  // The target was busy: nothing new goes before the resent chunks, nor before their time.
  if (!resend_.empty()) return now >= resend_at_;
  return next_ < state_.size();
}

uint64_t Window::take() {
  uint64_t seq = 0;
  if (!resend_.empty()) {
    seq = resend_.front();
    resend_.pop_front();
  } else {
    seq = next_++;
  }
  state_[seq] = kAwaited;
  ++in_flight_;
  return seq;
}

void Window::finish(uint64_t seq) {
  state_[seq] = kDone;
  backoff_ = std::chrono::microseconds{0};
  if (window_ < max_window_) ++window_;
  --in_flight_;
  ++done_;
}

std::chrono::microseconds Window::busy(uint64_t seq, Clock::time_point now) {
  state_[seq] = kToResend;
  resend_.push_back(seq);
  --in_flight_;
  window_ = 1;
  backoff_ = std::clamp(2 * backoff_, kResendFirst, kResendMax);
  resend_at_ = now + backoff_;
  return backoff_;
}

}  // namespace kvbm::xfer::detail::staging
