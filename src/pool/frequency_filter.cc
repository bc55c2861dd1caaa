#include "pool/frequency_filter.h"

#include <algorithm>

namespace kvbm::detail {

FrequencyFilter::FrequencyFilter(uint32_t min_hits, std::chrono::milliseconds period,
                                 size_t capacity, Clock::time_point now)
    : min_hits_(min_hits),
      period_(std::max(period, std::chrono::milliseconds(1))),
      capacity_(capacity),
      last_decay_(now) {}

void FrequencyFilter::halve(unsigned times) {
  for (auto it = counts_.begin(); it != counts_.end();) {
    it->second = times >= 32 ? 0 : it->second >> times;
    it = it->second == 0 ? counts_.erase(it) : std::next(it);
  }
}

void FrequencyFilter::decay_until(Clock::time_point now) {
  if (now < last_decay_ + period_) return;
  const auto periods = (now - last_decay_) / period_;
  last_decay_ += period_ * periods;
  halve(static_cast<unsigned>(std::min<decltype(periods)>(periods, 32)));
}

uint32_t FrequencyFilter::hit(SequenceHash hash, Clock::time_point now) {
  decay_until(now);
  auto it = counts_.find(hash);
  if (it == counts_.end()) {
    if (counts_.size() >= capacity_) halve(1);
    if (counts_.size() >= capacity_) return 1;  // untracked: this hit alone
    it = counts_.emplace(hash, 0).first;
  }
  if (it->second < UINT32_MAX) ++it->second;
  return it->second;
}

uint32_t FrequencyFilter::count(SequenceHash hash, Clock::time_point now) {
  decay_until(now);
  auto it = counts_.find(hash);
  return it == counts_.end() ? 0 : it->second;
}

}  // namespace kvbm::detail
