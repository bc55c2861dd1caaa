// A tier of the block manager: its layout (where the bytes are) and its pool (the
// bookkeeping). Movement between tiers is the offload manager's and onboard's business.
#pragma once

#include <array>
#include <memory>

#include "kvbm/layout.h"
#include "kvbm/pool/block_pool.h"

namespace kvbm::detail {

struct TierStore {
  Tier tier;
  Layout layout;
  std::unique_ptr<BlockPool> pool;
};

// Indexed by Tier; an absent tier is null.
using Tiers = std::array<std::unique_ptr<TierStore>, kNumTiers>;

inline TierStore* tier_of(const Tiers& tiers, Tier t) {
  return tiers[static_cast<size_t>(t)].get();
}

}  // namespace kvbm::detail
