// BlockManager: block pools on up to three tiers (G1 GPU, G2 host, G3 disk; see
// kvbm/pool/events.h), prefix match across them, and the movement of blocks between them.
//
//   register_block  a G1 block becomes matchable; it is queued for offload to G2 (and,
//                   through the frequency filter, on to G3; kvbm/pool/config.h).
//   match           the longest registered prefix of a list of sequence hashes, tier by
//                   tier: G1, then G2 for the rest, then G3, stopping at the first miss.
//                   No I/O; the returned handles keep the blocks from being evicted.
//   onboard         copies a match's G2 and G3 blocks into newly allocated G1 blocks (one
//                   engine request per source tier) and registers them there.
//
// The offload manager is a thread of its own: each batch is one TransferEngine request
// per tier pair. Its queue is bounded: when full, offloads are dropped and counted, and
// the caller never waits.
//
// Fail closed: a block whose bytes did not arrive is never served. When an onboard copy
// fails (I/O error, a file gone, a CUDA error), OnboardResult::failed names each block of
// that request, none of them is counted as a hit or returned, and their entries on the
// failing tier are removed (a Removed event each).
//
// Ownership: the manager owns its tiers' layouts and pools, its engine, and the offload
// thread (joined on destruction, after the batch in flight; queued offloads are dropped).
// Handles it returns may outlive it. Thread safety: every call may come from many threads.
#pragma once

#include "kvbm/export.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kvbm/layout.h"
#include "kvbm/pool/block_pool.h"
#include "kvbm/pool/config.h"
#include "kvbm/result.h"
#include "kvbm/transfer.h"

namespace kvbm {

/// Layouts to use instead of allocating a tier (e.g. a G1 the inference engine owns). All
/// must have config.block's shape (layers, outer, page, inner, dtype).
struct KVBM_API TierLayouts {
  ///@{
  /// One per tier; empty: allocated from the config.
  std::optional<Layout> g1, g2, g3;
  ///@}
};

/// The longest prefix of a request's blocks that some tier holds, tier by tier.
struct KVBM_API MatchResult {
  ///@{
  /// Consecutive parts of the matched prefix.
  std::vector<ImmutableBlock> g1, g2, g3;
  ///@}
  /// Blocks matched on every tier together.
  size_t blocks() const { return g1.size() + g2.size() + g3.size(); }
};

/// What onboard() brought to G1.
struct KVBM_API OnboardResult {
  /// The usable prefix on G1: the match's G1 blocks, then every onboarded block up to the
  /// first failure.
  std::vector<ImmutableBlock> blocks;
  /// Sequence hashes of the blocks whose copy failed, in match order.
  std::vector<SequenceHash> failed;
  std::optional<Error> error;  ///< the first copy error, when some failed
};

/// One tier's counters.
struct KVBM_API TierCounters {
  /// Hits: blocks (and their tokens) whose bytes were there to use: G1 blocks at match(),
  /// G2 and G3 blocks when onboard() brought them to G1.
  uint64_t hit_blocks = 0;
  uint64_t hit_tokens = 0;  ///< the hit blocks' tokens
  PoolCounters pool;        ///< absent tiers: all zero
};

/// Blocks moved between two tiers.
struct KVBM_API MoveCounters {
  uint64_t blocks = 0;         ///< blocks copied
  uint64_t bytes = 0;          ///< their bytes
  uint64_t failed_blocks = 0;  ///< copies that failed (their destinations freed)
};

/// Every counter of a block manager (counters()).
struct KVBM_API BlockManagerCounters {
  uint64_t lookups = 0;                       ///< match() calls
  std::array<TierCounters, kNumTiers> tiers;  ///< by Tier
  ///@{
  /// Offload.
  MoveCounters g1_to_g2, g2_to_g3, g1_to_g3;
  ///@}
  ///@{
  /// Onboard.
  MoveCounters g2_to_g1, g3_to_g1;
  ///@}
  uint64_t dropped_offloads = 0;  ///< queue full, or no space on the destination
  size_t queued_offloads = 0;     ///< waiting now
};

/// G1/G2/G3 block pools with offload and onboard between them (see the top of this file).
class KVBM_API BlockManager {
 public:
  /// InvalidArgument for a block shape that does not validate, g1_blocks of 0 without a
  /// G1 layout, a given layout of another shape (naming the tier); the allocators' errors.
  static Result<std::unique_ptr<BlockManager>> create(BlockManagerConfig config,
                                                      TierLayouts layouts = {});
  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  /// Whether the manager has this tier (a tier of 0 blocks is absent).
  bool has_tier(Tier tier) const;
  /// Preconditions: has_tier(tier). Blocks' bytes live at their block_id in the layout.
  BlockPool& pool(Tier tier);
  ///@{
  /// The tier's layout. Precondition: has_tier(tier).
  const Layout& layout(Tier tier) const;
  Layout& layout(Tier tier);
  ///@}
  /// The engine that copies between the tiers.
  TransferEngine& engine();
  uint32_t block_size() const;  ///< tokens per block

  /// n Reset blocks on G1 (BlockPool::allocate's errors).
  Result<std::vector<MutableBlock>> allocate(size_t n);
  /// Registers a Complete G1 block (BlockPool::register_block's errors) and queues it for
  /// offload.
  Result<ImmutableBlock> register_block(MutableBlock& block, uint32_t priority = 0);

  /// The longest prefix of `hashes` held on G1, then G2, then G3, each block taken (its
  /// handle keeps it from eviction). Never fails: no match is an empty result.
  MatchResult match(std::span<const SequenceHash> hashes);
  /// Brings the match's G2/G3 blocks to G1 (see above). AllocationFailed when G1 has no
  /// room for them (nothing copied; the match is left as it was). Blocks with a failed
  /// copy are reported in the result, not as an error.
  Result<OnboardResult> onboard(MatchResult& match);

  /// Waits until no offload is queued or in flight; Timeout otherwise.
  Status flush(std::chrono::milliseconds timeout = std::chrono::seconds(60));

  /// A snapshot of every counter.
  BlockManagerCounters counters() const;

  struct State;

 private:
  friend class ExternalG1;  // an engine-owned G1 (kvbm/pool/external_g1.h)
  explicit BlockManager(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvbm
