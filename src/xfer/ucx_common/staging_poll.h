// The initiator's side of answers by poll (staging_wire.h, staging_owed.h): when a poll
// may go to a target, per connection token. One poll is out per connection at a time;
// its answer ends with a "poll end" that says how many replies came with it. After an
// answer with replies the next poll may go at once (more may be ready soon); after an
// empty one, after a wait that doubles from kFirstWait to kMaxWait, so that a target
// whose I/O is slow is not asked without pause, and a reply waits at most kMaxWait for
// its poll. A poll unanswered for kLost (its answer was lost with a failed endpoint)
// no longer blocks the next.
//
// Thread safety: none; the caller's lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <unordered_map>

namespace kvbm::xfer::detail::staging {

class Polls {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::microseconds kFirstWait{2};
  static constexpr std::chrono::microseconds kMaxWait{20};
  static constexpr std::chrono::milliseconds kLost{1000};

  // Whether a poll for `token` may go at `now`; if so, it is counted as out.
  bool take(uint64_t token, Clock::time_point now);
  // The answer to `token`'s poll ended at `now`, after `replies` replies.
  void answered(uint64_t token, uint64_t replies, Clock::time_point now);
  // `token`'s poll could not be sent: the next may go at once.
  void failed(uint64_t token);
  // Forgets the connections with no poll out (their transfers are over).
  void prune();
  bool out(uint64_t token) const;

 private:
  struct State {
    bool out = false;
    Clock::time_point sent, next;
    std::chrono::microseconds wait{0};
  };
  std::unordered_map<uint64_t, State> tokens_;
};

}  // namespace kvbm::xfer::detail::staging
