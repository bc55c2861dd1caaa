#include "kvbm/pool/block_pool.h"

#include "pool/pool_state.h"

namespace kvbm {

using detail::kNoBlock;
using detail::PoolState;
using detail::SlotUse;

Result<std::unique_ptr<BlockPool>> BlockPool::create(Tier tier, size_t num_blocks,
                                                     EventCallback on_event) {
  if (num_blocks == 0 || num_blocks >= kNoBlock) {
    return err(ErrorCode::InvalidArgument, "a ", to_string(tier), " pool of ", num_blocks,
               " blocks: it needs 1 to ", kNoBlock - 1);
  }
  auto* state = new PoolState(tier, num_blocks, std::move(on_event));
  return std::unique_ptr<BlockPool>(new BlockPool(tier, state));
}

BlockPool::~BlockPool() {
  PoolState::release_pool(state_);
}

size_t BlockPool::num_blocks() const {
  return state_->slots.size();
}

Result<std::vector<MutableBlock>> BlockPool::allocate(size_t n) {
  std::vector<MutableBlock> out;
  out.reserve(n);
  std::lock_guard lock(state_->mu);
  PoolState& s = *state_;
  if (n > s.free.size() + s.inactive_count) {
    return err(ErrorCode::AllocationFailed, "cannot allocate ", n, " ", to_string(tier_),
               " blocks: ", s.free.size(), " free and ", s.inactive_count, " inactive");
  }
  for (size_t i = 0; i < n; ++i) {
    uint32_t id;
    if (!s.free.empty()) {
      id = s.free.back();
      s.free.pop_back();
    } else {
      id = s.evict_one_locked();
    }
    s.slots[id].use = SlotUse::Mutable;
    out.push_back(MutableBlock(state_, id));
  }
  s.handles += n;
  return out;
}

Result<ImmutableBlock> BlockPool::register_block(MutableBlock& block, uint32_t priority) {
  if (block.empty()) {
    return err(ErrorCode::InvalidArgument,
               "cannot register: the handle is empty (its block was registered, released or "
               "moved)");
  }
  if (block.pool_ != state_) {
    return err(ErrorCode::InvalidArgument, "cannot register ", to_string(block.tier()), " block ",
               block.id_, " with a ", to_string(tier_), " pool: it belongs to another pool");
  }
  if (block.state_ != BlockState::Complete) {
    return err(ErrorCode::InvalidArgument, "cannot register ", to_string(tier_), " block ",
               block.id_, ": it is ", to_string(block.state_), ", not Complete");
  }
  const SequenceBlock key = block.key_;
  std::lock_guard lock(state_->mu);
  PoolState& s = *state_;
  uint32_t id = block.id_;
  if (const uint32_t found = s.by_hash.find(key.sequence_hash); found != kNoBlock) {
    s.free_locked(block.id_);
    ++s.dedups;
    id = found;
    s.acquire_locked(id);
  } else {
    detail::Slot& slot = s.slots[id];
    slot.use = SlotUse::Registered;
    slot.hash = key.sequence_hash;
    slot.parent = key.parent_hash.value_or(0);
    slot.has_parent = key.parent_hash.has_value();
    slot.priority = priority;
    slot.refs = 1;
    s.by_hash.insert(key.sequence_hash, id);
    ++s.registered_count;
    s.emit_locked(EventKind::Stored, slot);
  }
  block.pool_ = nullptr;  // its count passes to the returned handle
  block.state_ = BlockState::Reset;
  const detail::Slot& slot = s.slots[id];
  std::optional<SequenceHash> parent;
  if (slot.has_parent) parent = slot.parent;
  return ImmutableBlock(state_, id, slot.hash, parent);
}

std::vector<ImmutableBlock> BlockPool::match(std::span<const SequenceHash> hashes) {
  std::vector<ImmutableBlock> out;
  std::lock_guard lock(state_->mu);
  PoolState& s = *state_;
  ++s.lookups;
  for (SequenceHash h : hashes) {
    const uint32_t id = s.by_hash.find(h);
    if (id == kNoBlock) break;
    s.acquire_locked(id);
    const detail::Slot& slot = s.slots[id];
    std::optional<SequenceHash> parent;
    if (slot.has_parent) parent = slot.parent;
    if (out.empty()) out.reserve(hashes.size());
    out.push_back(ImmutableBlock(state_, id, h, parent));
  }
  s.matched += out.size();
  s.handles += out.size();
  return out;
}

bool BlockPool::contains(SequenceHash hash) const {
  std::lock_guard lock(state_->mu);
  return state_->by_hash.find(hash) != kNoBlock;
}

ImmutableBlock BlockPool::find(SequenceHash hash) {
  std::lock_guard lock(state_->mu);
  PoolState& s = *state_;
  const uint32_t id = s.by_hash.find(hash);
  if (id == kNoBlock) return {};
  s.acquire_locked(id);
  ++s.handles;
  const detail::Slot& slot = s.slots[id];
  std::optional<SequenceHash> parent;
  if (slot.has_parent) parent = slot.parent;
  return ImmutableBlock(state_, id, hash, parent);
}

void BlockPool::remove(const ImmutableBlock& block) {
  if (block.pool_ != state_) return;
  std::lock_guard lock(state_->mu);
  detail::Slot& slot = state_->slots[block.id_];
  if (slot.use != SlotUse::Registered) return;
  state_->unregister_locked(block.id_);
  slot.use = SlotUse::Detached;
}

size_t BlockPool::clear_inactive() {
  std::lock_guard lock(state_->mu);
  size_t n = 0;
  for (uint32_t id; (id = state_->evict_one_locked()) != kNoBlock; ++n) {
    state_->free.push_back(id);
  }
  return n;
}

PoolCounters BlockPool::counters() const {
  std::lock_guard lock(state_->mu);
  const PoolState& s = *state_;
  PoolCounters c;
  c.total_blocks = s.slots.size();
  c.free_blocks = s.free.size();
  c.inactive_blocks = s.inactive_count;
  c.active_blocks = c.total_blocks - c.free_blocks - c.inactive_blocks;
  c.registered_blocks = s.registered_count;
  c.stored = s.stored;
  c.removed = s.removed;
  c.evictions = s.evictions;
  c.dedups = s.dedups;
  c.lookups = s.lookups;
  c.matched_blocks = s.matched;
  return c;
}

size_t BlockPool::bookkeeping_bytes() const {
  std::lock_guard lock(state_->mu);
  const PoolState& s = *state_;
  // A std::map node of the inactive lists: three pointers, a color, key and value, header.
  constexpr size_t kListNode = 64;
  return sizeof(PoolState) + s.slots.capacity() * sizeof(detail::Slot) +
         s.free.capacity() * sizeof(uint32_t) + s.by_hash.bytes() + s.inactive.size() * kListNode;
}

}  // namespace kvbm
