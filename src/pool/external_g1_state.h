// The state behind ExternalG1 and its operations, shared by their source files.
#pragma once

#include <optional>
#include <vector>

#include "kvbm/pool/external_g1.h"
#include "pool/manager_state.h"

namespace kvbm {

struct ExternalG1::State {
  BlockManager* manager = nullptr;
  BlockManager::State* m = nullptr;       // the manager's
  std::vector<Layout> layers[kNumTiers];  // per tier (empty for an absent G3): one per layer
};

struct ExternalSave::State {
  BlockManager::State* m = nullptr;
  std::vector<SequenceBlock> keys;   // of the copied blocks, in order
  std::vector<MutableBlock> dst;     // G2 blocks being filled
  std::optional<Transfer> transfer;  // after dst: destroyed (waited for) first
  SaveResult result;
  bool finished = false;
};

struct ExternalLoad::State {
  struct Part {
    Tier tier;
    std::vector<ImmutableBlock> src;  // held until finished
    std::vector<size_t> dst_ids;      // engine ids
    uint64_t bytes = 0;
    std::optional<Error> error;
  };
  struct Copy {
    size_t part;
    std::optional<Transfer> transfer;
    std::optional<Status> status;
  };
  BlockManager::State* m = nullptr;
  Part parts[2] = {{Tier::G2, {}, {}, 0, {}}, {Tier::G3, {}, {}, 0, {}}};
  std::vector<size_t> unmatched_ids;      // asked for, not matched
  std::vector<std::vector<Copy>> layers;  // after parts: waited for before the sources go
  LoadResult result;
  bool finished = false;
};

}  // namespace kvbm
