// Handles to the blocks of a BlockPool (kvbm/pool/block_pool.h). A block id indexes the
// tier's Layout; the handles carry the bookkeeping, never the bytes.
//
// Lifecycle: Reset -> Partial (being filled) -> Complete (keyed by a SequenceBlock) ->
// Registered (immutable, matchable by its sequence hash). A MutableBlock walks the first
// three states; BlockPool::register_block turns it into an ImmutableBlock. Every other
// transition is an InvalidArgument error naming the block and its state, and leaves the
// handle as it was.
//
// Ownership: a MutableBlock is move-only and owns its block: dropping it returns the block
// to the pool's free list. ImmutableBlocks are shared: copies count references, and when
// the last one goes the block stays registered and matchable in the pool's inactive set
// until its space is needed. Handles keep the pool's bookkeeping alive, so they may
// outlive the BlockPool object. Thread safety: one handle is used by one thread at a time;
// different handles (also copies of one ImmutableBlock) from many threads at once.
#pragma once

#include "kvbm/export.h"

#include <cstdint>
#include <optional>
#include <utility>

#include "kvbm/pool/events.h"
#include "kvbm/pool/token_sequence.h"
#include "kvbm/result.h"

namespace kvbm {

enum class BlockState : uint8_t { Reset, Partial, Complete, Registered };
KVBM_API const char* to_string(BlockState state);

namespace detail {
struct PoolState;
}

/// The one handle to a block being filled (Reset, Partial, Complete); move-only. Dropping
/// it returns the block to the free list.
class KVBM_API MutableBlock {
 public:
  MutableBlock() = default;  ///< empty
  /// Takes `other`'s block; `other` becomes empty.
  MutableBlock(MutableBlock&& other) noexcept;
  /// Frees this handle's block, then takes `other`'s.
  MutableBlock& operator=(MutableBlock&& other) noexcept;
  ~MutableBlock();

  /// Whether the handle holds no block.
  bool empty() const { return pool_ == nullptr; }
  /// Precondition for the accessors: !empty(). The block's index in its tier's layout.
  uint32_t block_id() const { return id_; }
  /// The pool's tier.
  Tier tier() const;
  /// Where in its life the block is.
  BlockState state() const { return state_; }
  /// The key given to complete() (Complete only).
  const SequenceBlock& key() const { return key_; }

  /// Reset -> Partial: the caller starts writing the block's bytes.
  Status begin_fill();
  /// Ok while Partial (the only state in which the block's bytes may be written).
  Status check_writable() const;
  /// Partial -> Complete with the key of the full block.
  Status complete(const SequenceBlock& key);
  /// Partial or Complete -> Reset (the bytes are to be rewritten). Error on an empty handle.
  Status reset();
  /// Returns the block to the free list now; the handle becomes empty.
  void release();

 private:
  friend class BlockPool;
  friend struct detail::PoolState;
  /// Precondition: the pool's lock is held and counted this handle.
  MutableBlock(detail::PoolState* pool, uint32_t id) : pool_(pool), id_(id) {}
  Status check_not_empty(const char* what) const;

  detail::PoolState* pool_ = nullptr;  ///< kept alive by the pool's count of handles
  uint32_t id_ = 0;
  BlockState state_ = BlockState::Reset;
  SequenceBlock key_;
};

/// A shared, counted handle to a Registered block: while one exists the block is active
/// (not evictable).
class KVBM_API ImmutableBlock {
 public:
  ImmutableBlock() = default;  ///< empty
  /// Another reference to the same block.
  ImmutableBlock(const ImmutableBlock& other);
  /// Drops this reference, then takes another to `other`'s block.
  ImmutableBlock& operator=(const ImmutableBlock& other);
  /// Inline: match() moves one handle per block into its result.
  ImmutableBlock(ImmutableBlock&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)),
        id_(other.id_),
        hash_(other.hash_),
        parent_(other.parent_),
        has_parent_(other.has_parent_) {}
  /// Drops this reference, then takes `other`'s; `other` becomes empty.
  ImmutableBlock& operator=(ImmutableBlock&& other) noexcept;
  ~ImmutableBlock() {
    if (pool_) release();
  }

  /// Whether the handle holds no block.
  bool empty() const { return pool_ == nullptr; }
  /// Precondition for the accessors: !empty(). The block's index in its tier's layout.
  uint32_t block_id() const { return id_; }
  /// The pool's tier.
  Tier tier() const;
  /// The hash it is registered under.
  SequenceHash sequence_hash() const { return hash_; }
  /// The previous block's sequence hash; none for a sequence's first block.
  std::optional<SequenceHash> parent_hash() const;
  /// Always Registered.
  BlockState state() const { return BlockState::Registered; }
  /// Drops this reference now; the handle becomes empty.
  void release();

 private:
  friend class BlockPool;
  friend struct detail::PoolState;
  /// Precondition: the pool's lock is held and counted this handle.
  ImmutableBlock(detail::PoolState* pool, uint32_t id, SequenceHash hash,
                 std::optional<SequenceHash> parent)
      : pool_(pool),
        id_(id),
        hash_(hash),
        parent_(parent.value_or(0)),
        has_parent_(parent.has_value()) {}

  detail::PoolState* pool_ = nullptr;  ///< kept alive by the pool's count of handles
  uint32_t id_ = 0;
  SequenceHash hash_ = 0;
  SequenceHash parent_ = 0;
  bool has_parent_ = false;
};

}  // namespace kvbm
