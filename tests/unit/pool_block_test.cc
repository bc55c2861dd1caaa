// BlockPool: lifecycle and its illegal transitions, dedup, eviction order, events.
#include <gtest/gtest.h>

#include <vector>

#include "kvbm/pool/block_pool.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

SequenceBlock key(SequenceHash h, std::optional<SequenceHash> parent = std::nullopt) {
  return SequenceBlock{.block_hash = h * 7, .sequence_hash = h, .parent_hash = parent};
}

std::unique_ptr<BlockPool> make_pool(size_t n, EventQueue* q = nullptr, Tier t = Tier::G1) {
  auto p = BlockPool::create(t, n, q ? q->callback() : EventCallback{});
  EXPECT_TRUE(p) << p.error().to_string();
  return std::move(*p);
}

MutableBlock one(BlockPool& pool) {
  auto b = pool.allocate(1);
  EXPECT_TRUE(b) << b.error().to_string();
  return std::move((*b)[0]);
}

// A block filled and keyed, ready to register.
Result<ImmutableBlock> fill_and_register(BlockPool& pool, SequenceBlock k, uint32_t prio = 0) {
  auto b = pool.allocate(1);
  if (!b) return b.error();
  KVBM_TRY((*b)[0].begin_fill());
  KVBM_TRY((*b)[0].complete(k));
  return pool.register_block((*b)[0], prio);
}

TEST(BlockPool, LifecycleResetPartialCompleteRegistered) {
  auto pool = make_pool(4);
  MutableBlock b = one(*pool);
  EXPECT_EQ(b.state(), BlockState::Reset);
  EXPECT_EQ(b.block_id(), 0u);
  ASSERT_TRUE(b.begin_fill());
  EXPECT_TRUE(b.check_writable());
  ASSERT_TRUE(b.complete(key(11)));
  EXPECT_EQ(b.state(), BlockState::Complete);
  auto r = pool->register_block(b);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(r->sequence_hash(), 11u);
  EXPECT_EQ(r->state(), BlockState::Registered);
  EXPECT_EQ(r->tier(), Tier::G1);
  EXPECT_TRUE(pool->contains(11));
  auto c = pool->counters();
  EXPECT_EQ(c.free_blocks, 3u);
  EXPECT_EQ(c.active_blocks, 1u);
  EXPECT_EQ(c.registered_blocks, 1u);
}

TEST(BlockPool, EveryIllegalTransitionIsAnError) {
  auto pool = make_pool(4);
  MutableBlock b = one(*pool);
  // From Reset: write, complete, register.
  EXPECT_ERROR(b.check_writable(), ErrorCode::InvalidArgument,
               "cannot write G1 block 0: it is Reset, not Partial");
  EXPECT_ERROR(b.complete(key(1)), ErrorCode::InvalidArgument,
               "cannot complete G1 block 0: it is Reset, not Partial");
  EXPECT_ERROR(pool->register_block(b), ErrorCode::InvalidArgument,
               "cannot register G1 block 0: it is Reset, not Complete");
  // From Partial: begin again, register before complete.
  ASSERT_TRUE(b.begin_fill());
  EXPECT_ERROR(b.begin_fill(), ErrorCode::InvalidArgument,
               "cannot begin filling G1 block 0: it is Partial, not Reset");
  EXPECT_ERROR(pool->register_block(b), ErrorCode::InvalidArgument, "it is Partial, not Complete");
  // From Complete: write, complete twice, begin.
  ASSERT_TRUE(b.complete(key(1)));
  EXPECT_ERROR(b.check_writable(), ErrorCode::InvalidArgument, "it is Complete, not Partial");
  EXPECT_ERROR(b.complete(key(2)), ErrorCode::InvalidArgument, "it is Complete, not Partial");
  EXPECT_ERROR(b.begin_fill(), ErrorCode::InvalidArgument, "it is Complete, not Reset");
  EXPECT_EQ(b.key().sequence_hash, 1u);  // errors leave the handle as it was
  // Registered: the mutable handle is spent; writing, completing, registering again fail.
  auto r = pool->register_block(b);
  ASSERT_TRUE(r);
  EXPECT_ERROR(b.check_writable(), ErrorCode::InvalidArgument, "cannot write: the handle is empty");
  EXPECT_ERROR(b.begin_fill(), ErrorCode::InvalidArgument, "the handle is empty");
  EXPECT_ERROR(b.complete(key(3)), ErrorCode::InvalidArgument, "the handle is empty");
  EXPECT_ERROR(b.reset(), ErrorCode::InvalidArgument, "the handle is empty");
  EXPECT_ERROR(pool->register_block(b), ErrorCode::InvalidArgument,
               "cannot register: the handle is empty");
  // A block of another pool.
  auto other = make_pool(2, nullptr, Tier::G2);
  MutableBlock o = one(*other);
  ASSERT_TRUE(o.begin_fill());
  ASSERT_TRUE(o.complete(key(9)));
  EXPECT_ERROR(pool->register_block(o), ErrorCode::InvalidArgument,
               "cannot register G2 block 0 with a G1 pool: it belongs to another pool");
  EXPECT_FALSE(o.empty());
  // Reset from Partial/Complete is legal and returns to Reset.
  ASSERT_TRUE(o.reset());
  EXPECT_EQ(o.state(), BlockState::Reset);
  EXPECT_TRUE(o.begin_fill());
}

TEST(BlockPool, CreateRejectsZeroBlocks) {
  EXPECT_ERROR(BlockPool::create(Tier::G3, 0), ErrorCode::InvalidArgument, "a G3 pool of 0 blocks");
}

TEST(BlockPool, AllocationIsAllOrNothing) {
  auto pool = make_pool(3);
  auto held = pool->allocate(2);
  ASSERT_TRUE(held);
  EXPECT_ERROR(pool->allocate(2), ErrorCode::AllocationFailed,
               "cannot allocate 2 G1 blocks: 1 free and 0 inactive");
  EXPECT_EQ(pool->counters().free_blocks, 1u);
  held->clear();  // dropping mutable handles frees the blocks
  EXPECT_EQ(pool->counters().free_blocks, 3u);
}

TEST(BlockPool, DedupReturnsTheExistingBlockAndFreesTheDuplicate) {
  EventQueue q;
  auto pool = make_pool(4, &q);
  auto first = fill_and_register(*pool, key(42));
  ASSERT_TRUE(first);
  auto second = fill_and_register(*pool, key(42));
  ASSERT_TRUE(second);
  EXPECT_EQ(second->block_id(), first->block_id());
  auto c = pool->counters();
  EXPECT_EQ(c.dedups, 1u);
  EXPECT_EQ(c.free_blocks, 3u);
  EXPECT_EQ(c.registered_blocks, 1u);
  EXPECT_EQ(q.drain(), (std::vector<Event>{{EventKind::Stored, Tier::G1, 42, std::nullopt}}));
  // Dedup onto an inactive block brings it back as active.
  first->release();
  second->release();
  EXPECT_EQ(pool->counters().inactive_blocks, 1u);
  auto third = fill_and_register(*pool, key(42));
  ASSERT_TRUE(third);
  EXPECT_EQ(pool->counters().inactive_blocks, 0u);
  EXPECT_EQ(pool->counters().dedups, 2u);
  EXPECT_TRUE(q.drain().empty());
}

TEST(BlockPool, DroppedRegisteredBlocksStayMatchableUntilNeeded) {
  EventQueue q;
  auto pool = make_pool(2, &q);
  {
    auto a = fill_and_register(*pool, key(1));
    auto b = fill_and_register(*pool, key(2, 1));
    ASSERT_TRUE(a && b);
  }
  auto c = pool->counters();
  EXPECT_EQ(c.inactive_blocks, 2u);
  const std::vector<SequenceHash> hashes{1, 2, 3};
  auto m = pool->match(hashes);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1].parent_hash(), std::optional<SequenceHash>(1));
  EXPECT_EQ(pool->counters().inactive_blocks, 0u);
  m.clear();
  q.drain();
  // Reusing one inactive block emits exactly one Removed event: the older one (hash 1,
  // released first by the match's order).
  auto fresh = pool->allocate(1);
  ASSERT_TRUE(fresh);
  EXPECT_EQ(q.drain(), (std::vector<Event>{{EventKind::Removed, Tier::G1, 1, std::nullopt}}));
  EXPECT_FALSE(pool->contains(1));
  EXPECT_TRUE(pool->contains(2));
  EXPECT_EQ(pool->counters().evictions, 1u);
  // The prefix is broken at hash 1: match finds nothing.
  EXPECT_TRUE(pool->match(hashes).empty());
}

TEST(BlockPool, EvictsLowestPriorityFirstThenLeastRecentlyReleased) {
  auto pool = make_pool(4);
  std::vector<ImmutableBlock> held;
  for (SequenceHash h : {10, 11, 12, 13}) {
    auto r = fill_and_register(*pool, key(h), h == 11 ? 0 : 5);
    ASSERT_TRUE(r);
    held.push_back(std::move(*r));
  }
  // Release in the order 13, 10, 12, 11: priority 0 (11) goes first, then 13, 10, 12.
  for (size_t i : {3, 0, 2, 1}) held[i].release();
  std::vector<SequenceHash> order;
  std::vector<MutableBlock> taken;  // held, so each allocation must evict
  for (int i = 0; i < 4; ++i) {
    std::vector<SequenceHash> before;
    for (SequenceHash h : {10, 11, 12, 13}) {
      if (pool->contains(h)) before.push_back(h);
    }
    auto b = pool->allocate(1);
    ASSERT_TRUE(b);
    for (SequenceHash h : before) {
      if (!pool->contains(h)) order.push_back(h);
    }
    taken.push_back(std::move(b->front()));
  }
  EXPECT_EQ(order, (std::vector<SequenceHash>{11, 13, 10, 12}));
}

TEST(BlockPool, FindTakesAReferenceAndCountsNoLookup) {
  auto pool = make_pool(2);
  { auto a = fill_and_register(*pool, key(3)); }
  EXPECT_TRUE(pool->find(4).empty());
  ImmutableBlock b = pool->find(3);
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(b.sequence_hash(), 3u);
  auto c = pool->counters();
  EXPECT_EQ(c.inactive_blocks, 0u);
  EXPECT_EQ(c.lookups, 0u);
  b.release();
  EXPECT_EQ(pool->counters().inactive_blocks, 1u);
}

TEST(BlockPool, RemoveDetachesAndFreesWithTheLastHandle) {
  EventQueue q;
  auto pool = make_pool(2, &q);
  auto a = fill_and_register(*pool, key(5));
  ASSERT_TRUE(a);
  ImmutableBlock copy = *a;
  q.drain();
  pool->remove(*a);
  pool->remove(copy);  // already removed: no second event
  EXPECT_EQ(q.drain(), (std::vector<Event>{{EventKind::Removed, Tier::G1, 5, std::nullopt}}));
  EXPECT_FALSE(pool->contains(5));
  EXPECT_EQ(pool->counters().free_blocks, 1u);
  a->release();
  EXPECT_EQ(pool->counters().free_blocks, 1u);
  copy.release();
  EXPECT_EQ(pool->counters().free_blocks, 2u);
  EXPECT_EQ(pool->counters().inactive_blocks, 0u);
}

TEST(BlockPool, ClearInactiveRemovesEachOnce) {
  EventQueue q;
  auto pool = make_pool(3, &q);
  auto keep = fill_and_register(*pool, key(1));
  { auto drop = fill_and_register(*pool, key(2, 1)); }
  q.drain();
  EXPECT_EQ(pool->clear_inactive(), 1u);
  EXPECT_EQ(q.drain(), (std::vector<Event>{{EventKind::Removed, Tier::G1, 2, 1}}));
  EXPECT_TRUE(pool->contains(1));
  EXPECT_EQ(pool->counters().free_blocks, 2u);
}

TEST(BlockPool, HandlesOutliveThePool) {
  auto pool = make_pool(2);
  auto a = fill_and_register(*pool, key(1));
  MutableBlock m = one(*pool);
  ASSERT_TRUE(a);
  pool.reset();
  ImmutableBlock copy = *a;
  EXPECT_EQ(copy.sequence_hash(), 1u);
  EXPECT_TRUE(m.begin_fill());
}

TEST(BlockPool, BookkeepingIsSmallPerBlock) {
  constexpr size_t kBlocks = 1 << 16;
  auto pool = make_pool(kBlocks);
  auto blocks = pool->allocate(kBlocks);
  ASSERT_TRUE(blocks);
  for (size_t i = 0; i < kBlocks; ++i) {
    ASSERT_TRUE((*blocks)[i].begin_fill());
    ASSERT_TRUE((*blocks)[i].complete(key(i + 1)));
    ASSERT_TRUE(pool->register_block((*blocks)[i]));
  }
  EXPECT_LE(pool->bookkeeping_bytes() / kBlocks, 128u);
}

}  // namespace
}  // namespace kvbm
