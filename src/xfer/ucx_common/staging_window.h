// The initiator's side of the chunked staging protocol (staging_wire.h): the accounting
// of one transfer's chunks in flight. Chunks go out in order, at most `window` at once;
// each is answered once; a chunk answered "busy" is sent again, before any new one, after
// a wait that doubles with each "busy" in a row, and the window shrinks to one chunk
// until the target takes one again, then regrows. What a chunk's bytes are and how
// they move is the caller's; a reply for a chunk not awaited is the caller's to judge.
//
// Thread safety: none; the caller's lock guards it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <vector>

namespace kvbm::xfer::detail::staging {

class Window {
 public:
  using Clock = std::chrono::steady_clock;
  // After a "busy": the first wait, and the most it grows to.
  static constexpr std::chrono::microseconds kResendFirst{100};
  static constexpr std::chrono::microseconds kResendMax{20000};

  // `chunks` to send, at most `window` in flight (unbounded by default: the caller's
  // staging buffers bound it).
  explicit Window(size_t chunks, size_t window = std::numeric_limits<size_t>::max())
      : state_(chunks, kUnsent), max_window_(window), window_(window) {}

  // Whether a chunk may be sent at `now`: the window has room, and a chunk to resend is
  // due (resent chunks go first), or one was never sent.
  bool ready(Clock::time_point now) const;
  // ready() now; the clock is read only while chunks wait to be resent.
  bool ready() const { return ready(resend_.empty() ? Clock::time_point{} : Clock::now()); }
  // The chunk to send, now in flight and awaiting its reply. Only when ready().
  uint64_t take();
  // Whether `seq` was sent and not answered yet.
  bool awaited(uint64_t seq) const { return seq < state_.size() && state_[seq] == kAwaited; }
  // A reply for `seq` arrived (awaited(seq) must hold): it stays in flight until finish().
  void answer(uint64_t seq) { state_[seq] = kAnswered; }
  // `seq` is done (answered, and its bytes in place): the window regrows by one.
  void finish(uint64_t seq);
  // `seq` was answered "busy": queued to be sent again; returns the wait before it is.
  std::chrono::microseconds busy(uint64_t seq, Clock::time_point now);

  bool has_resends() const { return !resend_.empty(); }
  bool all_sent() const { return next_ == state_.size() && resend_.empty(); }
  bool complete() const { return done_ == state_.size(); }
  size_t in_flight() const { return in_flight_; }
  size_t size() const { return state_.size(); }

 private:
  enum State : uint8_t { kUnsent, kAwaited, kAnswered, kToResend, kDone };
  std::vector<uint8_t> state_;  // State, per chunk
  size_t max_window_;
  size_t window_;
  size_t next_ = 0, in_flight_ = 0, done_ = 0;
  std::deque<uint64_t> resend_;
  Clock::time_point resend_at_;
  std::chrono::microseconds backoff_{0};
};

}  // namespace kvbm::xfer::detail::staging
