#include "xfer/ucx_common/staging_poll.h"

#include <algorithm>

namespace kvbm::xfer::detail::staging {

bool Polls::take(uint64_t token, Clock::time_point now) {
  State& s = tokens_[token];
  if (s.out && now - s.sent < kLost) return false;
  if (now < s.next) return false;
  s.out = true;
  s.sent = now;
  return true;
}

void Polls::answered(uint64_t token, uint64_t replies, Clock::time_point now) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;  // a connection forgotten, or a peer's stray answer
  State& s = it->second;
  s.out = false;
  s.wait =
      replies > 0 ? std::chrono::microseconds{0} : std::clamp(2 * s.wait, kFirstWait, kMaxWait);
  s.next = now + s.wait;
}

void Polls::failed(uint64_t token) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  it->second.out = false;
  it->second.next = {};
}

void Polls::prune() {
  std::erase_if(tokens_, [](const auto& t) { return !t.second.out; });
}

bool Polls::out(uint64_t token) const {
  auto it = tokens_.find(token);
  return it != tokens_.end() && it->second.out;
}

}  // namespace kvbm::xfer::detail::staging
