// The shared bookkeeping behind a BlockPool and its handles. Every member is guarded by
// `mu`; the *_locked functions require it held.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "kvbm/pool/events.h"
#include "pool/hash_index.h"

namespace kvbm::detail {

inline constexpr uint32_t kNoBlock = UINT32_MAX;

enum class SlotUse : uint8_t {
  Free,        // on the free list
  Mutable,     // owned by a MutableBlock
  Registered,  // in the hash map; refs handles, inactive when refs == 0
  Detached,    // removed from the map while handles remained; freed with the last
};

// Per-block bookkeeping; kept small (the pool's cost per block is this plus one map entry).
struct Slot {
  SequenceHash hash = 0;
  SequenceHash parent = 0;
  uint32_t refs = 0;
  uint32_t priority = 0;
  uint32_t prev = kNoBlock;  // inactive list of its priority
  uint32_t next = kNoBlock;
  SlotUse use = SlotUse::Free;
  bool has_parent = false;
};

// The inactive blocks of one priority, least recently released at the head.
struct InactiveList {
  uint32_t head = kNoBlock;
  uint32_t tail = kNoBlock;
};

struct PoolState {
  PoolState(Tier t, size_t n, EventCallback cb);

  mutable std::mutex mu;
  const Tier tier;
  std::vector<Slot> slots;
  std::vector<uint32_t> free;                 // a stack
  std::map<uint32_t, InactiveList> inactive;  // by priority, lowest first
  size_t inactive_count = 0;
  size_t registered_count = 0;
  HashIndex by_hash;
  EventCallback on_event;
  // The state lives while the pool or a handle does: handles are counted under the lock
  // (cheaper than a shared_ptr's atomic per handle), and the last one out deletes it.
  size_t handles = 0;
  bool pool_alive = true;
  uint64_t stored = 0, removed = 0, evictions = 0, dedups = 0, lookups = 0, matched = 0;

  void emit_locked(EventKind kind, const Slot& s);
  void push_inactive_locked(uint32_t id);
  void unlink_inactive_locked(uint32_t id);
  // Takes a reference on a registered block (out of the inactive set if it was there).
  void acquire_locked(uint32_t id);
  // Drops a reference; the last one makes the block inactive (or free, if detached).
  void release_locked(uint32_t id);
  void free_locked(uint32_t id);
  // Evicts the lowest-priority, least recently released inactive block; kNoBlock if none.
  uint32_t evict_one_locked();
  // Removes a registered block's hash from the map (one Removed event).
  void unregister_locked(uint32_t id);

  // A handle goes: frees its block (mutable) or drops its reference, and deletes the state
  // when nothing else refers to it.
  static void release_handle(PoolState* s, uint32_t id, bool is_mutable);
  // The pool goes; the state stays while handles remain.
  static void release_pool(PoolState* s);
};

}  // namespace kvbm::detail
