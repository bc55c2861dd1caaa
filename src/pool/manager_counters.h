// The block manager's own counters (the pools keep theirs), under one mutex so a
// snapshot is consistent.
#pragma once

#include <mutex>

#include "kvbm/pool/block_manager.h"

namespace kvbm::detail {

class ManagerCounters {
 public:
  void lookup() {
    std::lock_guard lock(mu_);
    ++c_.lookups;
  }
  void hits(Tier t, uint64_t blocks, uint64_t tokens) {
    std::lock_guard lock(mu_);
    c_.tiers[static_cast<size_t>(t)].hit_blocks += blocks;
    c_.tiers[static_cast<size_t>(t)].hit_tokens += tokens;
  }
  void moved(Tier src, Tier dst, uint64_t blocks, uint64_t bytes, uint64_t failed) {
    std::lock_guard lock(mu_);
    MoveCounters* m = pick(src, dst);
    if (m == nullptr) return;
    m->blocks += blocks;
    m->bytes += bytes;
    m->failed_blocks += failed;
  }
  void dropped(uint64_t n) {
    std::lock_guard lock(mu_);
    c_.dropped_offloads += n;
  }
  BlockManagerCounters snapshot() const {
    std::lock_guard lock(mu_);
    return c_;
  }

 private:
  MoveCounters* pick(Tier src, Tier dst) {
    if (src == Tier::G1 && dst == Tier::G2) return &c_.g1_to_g2;
    if (src == Tier::G2 && dst == Tier::G3) return &c_.g2_to_g3;
    if (src == Tier::G1 && dst == Tier::G3) return &c_.g1_to_g3;
    if (src == Tier::G2 && dst == Tier::G1) return &c_.g2_to_g1;
    if (src == Tier::G3 && dst == Tier::G1) return &c_.g3_to_g1;
    return nullptr;
  }

  mutable std::mutex mu_;
  BlockManagerCounters c_;
};

}  // namespace kvbm::detail
