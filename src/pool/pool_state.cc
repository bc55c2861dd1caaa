#include "pool/pool_state.h"

namespace kvbm::detail {

PoolState::PoolState(Tier t, size_t n, EventCallback cb)
    : tier(t), slots(n), by_hash(n), on_event(std::move(cb)) {
  free.reserve(n);
  // Lowest ids on top of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (size_t i = n; i > 0; --i) free.push_back(static_cast<uint32_t>(i - 1));
}

void PoolState::emit_locked(EventKind kind, const Slot& s) {
  if (kind == EventKind::Stored) {
    ++stored;
  } else {
    ++removed;
  }
  if (!on_event) return;
  Event e{.kind = kind, .tier = tier, .sequence_hash = s.hash, .parent_hash = {}};
  if (s.has_parent) e.parent_hash = s.parent;
  on_event(e);
}

void PoolState::push_inactive_locked(uint32_t id) {
  Slot& s = slots[id];
  InactiveList& list = inactive[s.priority];
  s.prev = list.tail;
  s.next = kNoBlock;
  if (list.tail != kNoBlock) {
    slots[list.tail].next = id;
  } else {
    list.head = id;
  }
  list.tail = id;
  ++inactive_count;
}

void PoolState::unlink_inactive_locked(uint32_t id) {
  Slot& s = slots[id];
  auto it = inactive.find(s.priority);
  InactiveList& list = it->second;
  if (s.prev != kNoBlock) {
    slots[s.prev].next = s.next;
  } else {
    list.head = s.next;
  }
  if (s.next != kNoBlock) {
    slots[s.next].prev = s.prev;
  } else {
    list.tail = s.prev;
  }
  s.prev = s.next = kNoBlock;
  if (list.head == kNoBlock) inactive.erase(it);
  --inactive_count;
}

void PoolState::acquire_locked(uint32_t id) {
  Slot& s = slots[id];
  if (s.refs == 0) unlink_inactive_locked(id);
  ++s.refs;
}

void PoolState::release_locked(uint32_t id) {
  Slot& s = slots[id];
  if (--s.refs > 0) return;
  if (s.use == SlotUse::Detached) {
    free_locked(id);
  } else {
    push_inactive_locked(id);
  }
}

void PoolState::free_locked(uint32_t id) {
  Slot& s = slots[id];
  s = Slot{};
  free.push_back(id);
}

void PoolState::unregister_locked(uint32_t id) {
  Slot& s = slots[id];
  by_hash.erase(s.hash);
  --registered_count;
  emit_locked(EventKind::Removed, s);
}

void PoolState::release_handle(PoolState* s, uint32_t id, bool is_mutable) {
  bool last;
  {
    std::lock_guard lock(s->mu);
    if (is_mutable) {
      s->free_locked(id);
    } else {
      s->release_locked(id);
    }
    last = --s->handles == 0 && !s->pool_alive;
  }
  if (last) delete s;
}

void PoolState::release_pool(PoolState* s) {
  bool last;
  {
    std::lock_guard lock(s->mu);
    s->pool_alive = false;
    last = s->handles == 0;
  }
  if (last) delete s;
}

uint32_t PoolState::evict_one_locked() {
  if (inactive.empty()) return kNoBlock;
  const uint32_t id = inactive.begin()->second.head;
  unlink_inactive_locked(id);
  unregister_locked(id);
  ++evictions;
  slots[id] = Slot{};
  return id;
}

}  // namespace kvbm::detail
