#include "xfer/ucx_common/staging_owed.h"

#include <algorithm>

namespace kvbm::xfer::detail::staging {

void OwedReplies::heard(ucp_ep_h ep, uint64_t token, Clock::time_point now) {
  // Only connections owed something are kept: a poll answered in full leaves none.
  auto it = owed_.find({ep, token});
  if (it != owed_.end()) it->second.heard = std::max(it->second.heard, now);
}

void OwedReplies::add(ucp_ep_h ep, uint64_t token, Reply r, Clock::time_point now) {
  Owed& o = owed_[{ep, token}];
  if (o.replies.empty()) o.heard = std::max(o.heard, now);
  o.replies.push_back(std::move(r));
}

size_t OwedReplies::answer(ucp_ep_h ep, uint64_t token, const Send& send) {
  auto it = owed_.find({ep, token});
  if (it == owed_.end()) return 0;
  std::vector<Reply> replies = std::move(it->second.replies);
  owed_.erase(it);
  for (Reply& r : replies) send(std::move(r));
  return replies.size();
}

size_t OwedReplies::expire(Clock::time_point now) {
  size_t dropped = 0;
  for (auto it = owed_.begin(); it != owed_.end();) {
    Owed& o = it->second;
    if (now - o.heard >= kForget) {
      dropped += o.replies.size();
      it = owed_.erase(it);
      continue;
    }
    if (now - o.heard >= kHoldBytes) {
      for (Reply& r : o.replies) {
        if (!r.bytes) continue;
        r.bytes.reset();
        r.len = 0;
        r.h.error = ErrorCode::Timeout;
        r.error_text =
            "the chunk's bytes were dropped: the initiator did not poll for them within " +
            std::to_string(kHoldBytes.count()) + " s";
        ++dropped;
      }
    }
    ++it;
  }
  return dropped;
}

size_t OwedReplies::expire_due(Clock::time_point now) {
  if (now < next_expiry_) return 0;
  next_expiry_ = now + kExpiryPeriod;
  return expire(now);
}

void OwedReplies::forget(ucp_ep_h ep) {
  std::erase_if(owed_, [&](const auto& o) { return o.first.first == ep; });
}

size_t OwedReplies::size() const {
  size_t n = 0;
  for (const auto& [key, o] : owed_) n += o.replies.size();
  return n;
}

}  // namespace kvbm::xfer::detail::staging
