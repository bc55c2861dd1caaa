// BlockPool: the bookkeeping of one tier's blocks (ids 0..num_blocks-1 of its Layout): a
// free list, reference counts, the inactive set (registered blocks nobody holds, ordered by
// priority, then least recently released), and the sequence hash -> block map. No bytes
// move here: the block manager (kvbm/pool/block_manager.h) copies them.
//
// Allocation takes free blocks first, then evicts inactive ones: lowest priority first,
// and among equals the one released longest ago (one Removed event each). Registering a
// sequence hash that is already present returns the existing block (dedup) and frees the
// duplicate. match() returns the longest registered prefix of a list of sequence hashes.
//
// Ownership: the pool's state is shared with its handles (kvbm/pool/block.h). Thread
// safety: every call may come from many threads at once (one mutex per pool); the event
// callback runs under that mutex (kvbm/pool/events.h).
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvbm/pool/block.h"
#include "kvbm/pool/events.h"
#include "kvbm/result.h"

namespace kvbm {

/// A pool's counters (counters()).
struct KVBM_API PoolCounters {
  size_t total_blocks = 0;       ///< the pool's size
  size_t free_blocks = 0;        ///< Reset, on the free list
  size_t inactive_blocks = 0;    ///< registered, no handle: matchable and evictable
  size_t active_blocks = 0;      ///< held by a handle (mutable or immutable)
  size_t registered_blocks = 0;  ///< matchable now (active or inactive)
  uint64_t stored = 0;           ///< Stored events (new registrations)
  uint64_t removed = 0;          ///< Removed events (evictions + drops)
  uint64_t evictions = 0;        ///< inactive blocks taken by allocate()
  uint64_t dedups = 0;           ///< registrations that found their hash present
  uint64_t lookups = 0;          ///< match() calls
  uint64_t matched_blocks = 0;   ///< blocks those calls matched
};

/// The blocks of one tier: allocation, registration under sequence hashes, prefix match
/// and eviction of inactive blocks (see the top of this file).
class KVBM_API BlockPool {
 public:
  /// InvalidArgument for 0 blocks or more than 2^32 - 2.
  static Result<std::unique_ptr<BlockPool>> create(Tier tier, size_t num_blocks,
                                                   EventCallback on_event = {});
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  /// The tier it serves.
  Tier tier() const { return tier_; }
  /// Its size in blocks.
  size_t num_blocks() const;

  /// n blocks in state Reset, all or none: AllocationFailed naming n and what is available
  /// (free + inactive) when there are too few.
  Result<std::vector<MutableBlock>> allocate(size_t n);

  /// Complete -> Registered. On success `block` becomes empty. InvalidArgument (the handle
  /// unchanged) for an empty handle, a block of another pool, or one not Complete. When the
  /// hash is registered already, returns that block and frees `block` (dedup). Higher
  /// priority blocks are evicted later.
  Result<ImmutableBlock> register_block(MutableBlock& block, uint32_t priority = 0);

  /// The longest prefix of `hashes` registered here, one handle per block, in order.
  std::vector<ImmutableBlock> match(std::span<const SequenceHash> hashes);
  /// True when `hash` is registered here (takes no reference, counts no lookup).
  bool contains(SequenceHash hash) const;
  /// A handle to the block registered under `hash`, or an empty one; counts no lookup (for
  /// the movers between tiers).
  ImmutableBlock find(SequenceHash hash);

  /// Makes the block unmatchable now (one Removed event); its space returns to the free
  /// list when its last handle goes. No-op when it was removed already.
  void remove(const ImmutableBlock& block);
  /// Evicts every inactive block (one Removed event each); returns how many.
  size_t clear_inactive();

  /// A snapshot of the counters.
  PoolCounters counters() const;
  /// Heap and object bytes of the pool's bookkeeping (slots, free list, hash map, inactive
  /// lists), an estimate from container sizes.
  size_t bookkeeping_bytes() const;

 private:
  BlockPool(Tier tier, detail::PoolState* state) : tier_(tier), state_(state) {}
  Tier tier_;
  /// Shared with the handles: freed by the last of the pool and its handles to go.
  detail::PoolState* state_;
};

}  // namespace kvbm
