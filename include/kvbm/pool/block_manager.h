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

// Layouts to use instead of allocating a tier (e.g. a G1 the inference engine owns). All
// must have config.block's shape (layers, outer, page, inner, dtype).
struct TierLayouts {
  std::optional<Layout> g1, g2, g3;
};

struct MatchResult {
  std::vector<ImmutableBlock> g1, g2, g3;  // consecutive parts of the matched prefix
  size_t blocks() const { return g1.size() + g2.size() + g3.size(); }
};

struct OnboardResult {
  // The usable prefix on G1: the match's G1 blocks, then every onboarded block up to the
  // first failure.
  std::vector<ImmutableBlock> blocks;
  // Sequence hashes of the blocks whose copy failed, in match order.
  std::vector<SequenceHash> failed;
  std::optional<Error> error;  // the first copy error, when some failed
};

struct TierCounters {
  // Hits: blocks (and their tokens) whose bytes were there to use: G1 blocks at match(),
  // G2 and G3 blocks when onboard() brought them to G1.
  uint64_t hit_blocks = 0;
  uint64_t hit_tokens = 0;
  PoolCounters pool;  // absent tiers: all zero
};

struct MoveCounters {
  uint64_t blocks = 0;
  uint64_t bytes = 0;
  uint64_t failed_blocks = 0;  // copies that failed (their destinations freed)
};

struct BlockManagerCounters {
  uint64_t lookups = 0;  // match() calls
  std::array<TierCounters, kNumTiers> tiers;
  MoveCounters g1_to_g2, g2_to_g3, g1_to_g3;  // offload
  MoveCounters g2_to_g1, g3_to_g1;            // onboard
  uint64_t dropped_offloads = 0;              // queue full, or no space on the destination
  size_t queued_offloads = 0;                 // waiting now
};

class BlockManager {
 public:
  // InvalidArgument for a block shape that does not validate, g1_blocks of 0 without a
  // G1 layout, a given layout of another shape (naming the tier); the allocators' errors.
  static Result<std::unique_ptr<BlockManager>> create(BlockManagerConfig config,
                                                      TierLayouts layouts = {});
  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  bool has_tier(Tier tier) const;
  // Preconditions: has_tier(tier). Blocks' bytes live at their block_id in the layout.
  BlockPool& pool(Tier tier);
  const Layout& layout(Tier tier) const;
  Layout& layout(Tier tier);
  TransferEngine& engine();
  uint32_t block_size() const;  // tokens per block

  // n Reset blocks on G1 (BlockPool::allocate's errors).
  Result<std::vector<MutableBlock>> allocate(size_t n);
  // Registers a Complete G1 block (BlockPool::register_block's errors) and queues it for
  // offload.
  Result<ImmutableBlock> register_block(MutableBlock& block, uint32_t priority = 0);

  MatchResult match(std::span<const SequenceHash> hashes);
  // Brings the match's G2/G3 blocks to G1 (see above). AllocationFailed when G1 has no
  // room for them (nothing copied; the match is left as it was). Blocks with a failed
  // copy are reported in the result, not as an error.
  Result<OnboardResult> onboard(MatchResult& match);

  // Waits until no offload is queued or in flight; Timeout otherwise.
  Status flush(std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // A snapshot of every counter.
  BlockManagerCounters counters() const;

  struct State;

 private:
  friend class ExternalG1;  // an engine-owned G1 (kvbm/pool/external_g1.h)
  explicit BlockManager(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvbm
