// The state behind a BlockManager, shared by its source files.
#pragma once

#include <memory>

#include "kvbm/pool/block_manager.h"
#include "pool/manager_counters.h"
#include "pool/offload_manager.h"
#include "pool/tier.h"

namespace kvbm {

struct BlockManager::State {
  BlockManagerConfig config;
  std::unique_ptr<TransferEngine> engine;
  detail::Tiers tiers;
  detail::ManagerCounters counters;
  std::unique_ptr<detail::OffloadManager> offload;  // last: stopped before the rest goes

  detail::TierStore& tier(Tier t) const { return *detail::tier_of(tiers, t); }
};

}  // namespace kvbm
