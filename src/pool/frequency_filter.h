// The frequency filter in front of the disk tier: counts hits per sequence hash; a block
// is worth writing to disk once its count reaches min_hits. Every `period` all counts
// halve (those reaching 0 are forgotten), so only recent reuse counts. At most `capacity`
// hashes are tracked: a new one beyond that first forces a decay, and is left out if that
// frees nothing. Not thread-safe: its owner locks.
#pragma once

#include <chrono>
#include <cstdint>
#include <unordered_map>

#include "kvbm/pool/hash.h"

namespace kvbm::detail {

class FrequencyFilter {
 public:
  using Clock = std::chrono::steady_clock;

  FrequencyFilter(uint32_t min_hits, std::chrono::milliseconds period, size_t capacity,
                  Clock::time_point now = Clock::now());

  // Counts one hit; returns the count after it.
  uint32_t hit(SequenceHash hash, Clock::time_point now = Clock::now());
  uint32_t count(SequenceHash hash, Clock::time_point now = Clock::now());
  bool passes(SequenceHash hash, Clock::time_point now = Clock::now()) {
    return count(hash, now) >= min_hits_;
  }
  uint32_t min_hits() const { return min_hits_; }
  size_t tracked() const { return counts_.size(); }

 private:
  void decay_until(Clock::time_point now);
  void halve(unsigned times);

  uint32_t min_hits_;
  std::chrono::milliseconds period_;
  size_t capacity_;
  Clock::time_point last_decay_;
  std::unordered_map<SequenceHash, uint32_t> counts_;
};

}  // namespace kvbm::detail
