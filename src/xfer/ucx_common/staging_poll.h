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
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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

// The chunk requests sent and not yet answered, per transfer, with the peer they went
// to: what the initiator polls for, whatever became of the transfer since. A transfer
// cancelled or failed with chunks at the target still polls for their answers: until
// polled for, they hold the target's staging buffers.
template <class Peer>
class Outstanding {
 public:
  void sent(uint64_t xfer, const std::shared_ptr<Peer>& peer) {
    Entry& e = xfers_[xfer];
    e.peer = peer;
    ++e.count;
  }
  // An answer (or a failed send) for one of `xfer`'s requests.
  void answered(uint64_t xfer) {
    auto it = xfers_.find(xfer);
    if (it != xfers_.end() && --it->second.count == 0) xfers_.erase(it);
  }
  // `peer` is gone: nothing it owes is asked for again.
  void drop_peer(const Peer* peer) {
    std::erase_if(xfers_, [&](const auto& x) { return x.second.peer.get() == peer; });
  }
  bool empty() const { return xfers_.empty(); }
  // f(peer) for each transfer's peer (a peer once per transfer with requests out).
  template <class F>
  void for_each_peer(F&& f) const {
    for (const auto& [xfer, e] : xfers_) f(e.peer);
  }

 private:
  struct Entry {
    std::shared_ptr<Peer> peer;
    size_t count = 0;
  };
  std::map<uint64_t, Entry> xfers_;
};

}  // namespace kvbm::xfer::detail::staging
