// The target's side of answers by poll (staging_wire.h): the replies it owes initiators,
// kept until each initiator's poll comes for them. Why not send them when ready: UCX
// gives a target the endpoint a message came on (its "reply endpoint") valid only while
// that message's callback runs. For an initiator the target never connected to, UCX made
// that endpoint itself, and destroys it, telling no one, when the initiator fails; a
// reply sent on it after the callback (once a chunk's file I/O is done, say) may touch
// freed memory. Inside the callback of the initiator's next poll the endpoint is valid.
//
// Replies are owed to (endpoint, token): the initiator's connection token rides in every
// request and poll, so that an endpoint UCX destroyed and reused for another initiator
// never gets the replies of the one before. An initiator that stops polling (it died)
// leaves its replies: a READ's bytes are dropped kHoldBytes after the last contact (the
// reply becomes an error, so a late poll still learns of the chunk); the rest goes
// kForget after it.
//
// The endpoints are compared, never used, here. Thread safety: none; the caller's lock.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "xfer/ucx_common/staging_pool.h"
#include "xfer/ucx_common/staging_wire.h"

namespace kvbm::xfer::detail::staging {

class OwedReplies {
 public:
  using Clock = std::chrono::steady_clock;
  // Unpolled this long after the last contact, a READ's bytes go back to their pool.
  static constexpr std::chrono::seconds kHoldBytes{10};
  // Unpolled this long, every reply owed to the connection is dropped.
  static constexpr std::chrono::seconds kForget{600};
  static constexpr std::chrono::seconds kExpiryPeriod{1};

  struct Reply {
    ChunkReply h;
    std::string error_text;     // the body when h.error is set
    Buffer bytes{nullptr, {}};  // a READ's bytes (h.error unset), `len` of them
    size_t len = 0;
  };
  // Sends one reply (on the endpoint of the poll being answered).
  using Send = std::function<void(Reply&&)>;

  // A request or poll from `token` on `ep` arrived at `now`: its replies are held on.
  void heard(ucp_ep_h ep, uint64_t token, Clock::time_point now);
  // Owes `r` to `token` on `ep` (ready at `now`).
  void add(ucp_ep_h ep, uint64_t token, Reply r, Clock::time_point now);
  // Answers a poll: every reply owed to (`ep`, `token`) goes to `send`, in the order
  // owed; returns how many went.
  size_t answer(ucp_ep_h ep, uint64_t token, const Send& send);
  // Drops what initiators left (see above); returns the replies dropped or whose bytes
  // went.
  size_t expire(Clock::time_point now);
  // expire(now), where kExpiryPeriod has passed since it last ran here: what dead
  // initiators left is looked for now and then, not on every progress call.
  size_t expire_due(Clock::time_point now);
  // The replies owed on `ep` go: it is closing.
  void forget(ucp_ep_h ep);
  void clear() { owed_.clear(); }
  // Replies owed, to every initiator.
  size_t size() const;

 private:
  struct Owed {
    Clock::time_point heard;  // the last contact, or the first reply owed
    std::vector<Reply> replies;
  };
  std::map<std::pair<ucp_ep_h, uint64_t>, Owed> owed_;
  Clock::time_point next_expiry_{};
};

}  // namespace kvbm::xfer::detail::staging
