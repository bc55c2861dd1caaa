// Seeded random operations on two small pools (G1, and a G2 that G1 blocks are offloaded
// to), every eviction, event, match and count compared with a plain reference model.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "kvbm/pool/block_pool.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

// Fewer operations under the sanitizers (several times slower), so CI stays quick.
size_t op_count() {
  if (const char* env = std::getenv("KVBM_POOL_MODEL_OPS")) return std::strtoull(env, nullptr, 10);
  return testing::kSanitized ? 100'000 : 1'000'000;
}

// The reference: what a pool of `total` blocks must do, in the plainest terms.
class Model {
 public:
  Model(Tier tier, size_t total) : tier_(tier), free_(total) {}

  struct Entry {
    SequenceHash hash = 0;
    uint32_t refs = 0, priority = 0;
    uint64_t released_at = 0;
    bool registered = true;
  };

  // Returns false when the pool must refuse; fills `events` with its Removed events.
  bool allocate(size_t n, std::vector<Event>& events) {
    size_t inactive = 0;
    for (auto& [g, e] : entries_) inactive += e.refs == 0 ? 1 : 0;
    if (n > free_ + inactive) return false;
    const size_t from_free = std::min(n, free_);
    free_ -= from_free;
    for (size_t i = from_free; i < n; ++i) {
      auto victim = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->second.refs != 0) continue;
        if (victim == entries_.end() || it->second.priority < victim->second.priority ||
            (it->second.priority == victim->second.priority &&
             it->second.released_at < victim->second.released_at)) {
          victim = it;
        }
      }
      events.push_back({EventKind::Removed, tier_, victim->second.hash, std::nullopt});
      by_hash_.erase(victim->second.hash);
      entries_.erase(victim);
    }
    return true;
  }
  // A complete block registered: returns the entry (generation) its handle refers to.
  uint64_t register_block(SequenceHash h, uint32_t priority, std::vector<Event>& events) {
    if (auto it = by_hash_.find(h); it != by_hash_.end()) {
      ++free_;  // the duplicate
      ++entries_[it->second].refs;
      return it->second;
    }
    const uint64_t g = ++generation_;
    entries_[g] = Entry{.hash = h, .refs = 1, .priority = priority};
    by_hash_[h] = g;
    events.push_back({EventKind::Stored, tier_, h, std::nullopt});
    return g;
  }
  std::vector<uint64_t> match(const std::vector<SequenceHash>& hashes) {
    std::vector<uint64_t> out;
    for (SequenceHash h : hashes) {
      auto it = by_hash_.find(h);
      if (it == by_hash_.end()) break;
      ++entries_[it->second].refs;
      out.push_back(it->second);
    }
    return out;
  }
  void drop(uint64_t g) {
    Entry& e = entries_.at(g);
    if (--e.refs > 0) return;
    if (!e.registered) {
      entries_.erase(g);
      ++free_;
    } else {
      e.released_at = ++clock_;
    }
  }
  void remove(uint64_t g, std::vector<Event>& events) {
    Entry& e = entries_.at(g);
    if (!e.registered) return;
    e.registered = false;
    by_hash_.erase(e.hash);
    events.push_back({EventKind::Removed, tier_, e.hash, std::nullopt});
  }
  void drop_mutable() { ++free_; }
  size_t free() const { return free_; }
  size_t registered() const { return by_hash_.size(); }

 private:
  Tier tier_;
  size_t free_;
  uint64_t generation_ = 0, clock_ = 0;
  std::map<uint64_t, Entry> entries_;
  std::map<SequenceHash, uint64_t> by_hash_;
};

struct Held {
  ImmutableBlock block;
  uint64_t generation;
};

// One pool, its model, and the handles the test holds.
struct Side {
  Side(Tier tier, size_t n) : model(tier, n) {
    auto p = BlockPool::create(tier, n, events.callback());
    EXPECT_TRUE(p);
    pool = std::move(*p);
  }
  EventQueue events;
  std::unique_ptr<BlockPool> pool;
  Model model;
  std::vector<Held> held;
  std::vector<MutableBlock> filling;

  // Allocates n blocks and keys them (Complete), or checks the refusal.
  void allocate(size_t n, std::mt19937_64& rng, std::vector<Event>& want) {
    auto got = pool->allocate(n);
    ASSERT_EQ(got.ok(), model.allocate(n, want)) << "allocate " << n;
    if (!got) return;
    for (auto& b : *got) {
      ASSERT_TRUE(b.begin_fill());
      ASSERT_TRUE(b.complete(SequenceBlock{
          .block_hash = 0, .sequence_hash = rng() % 48, .parent_hash = std::nullopt}));
      filling.push_back(std::move(b));
    }
  }
  void register_one(size_t i, uint32_t priority, std::vector<Event>& want) {
    const SequenceHash h = filling[i].key().sequence_hash;
    auto r = pool->register_block(filling[i], priority);
    ASSERT_TRUE(r) << r.error().to_string();
    filling.erase(filling.begin() + static_cast<ptrdiff_t>(i));
    held.push_back({std::move(*r), model.register_block(h, priority, want)});
  }
  void check(const std::vector<Event>& want, size_t op) {
    ASSERT_EQ(events.drain(), want) << "events of op " << op;
    if (op % 64 != 0) return;
    const PoolCounters c = pool->counters();
    ASSERT_EQ(c.free_blocks, model.free()) << "op " << op;
    ASSERT_EQ(c.registered_blocks, model.registered()) << "op " << op;
  }
};

TEST(PoolModel, RandomOperationsMatchTheReferenceModel) {
  std::mt19937_64 rng(20261206);
  Side g1(Tier::G1, 16), g2(Tier::G2, 24);
  const size_t ops = op_count();
  for (size_t op = 0; op < ops; ++op) {
    std::vector<Event> want1, want2;
    const unsigned dice = rng() % 100;
    if (dice < 22) {
      if (g1.filling.size() < 4) g1.allocate(1 + rng() % 3, rng, want1);
    } else if (dice < 42) {
      if (!g1.filling.empty()) g1.register_one(rng() % g1.filling.size(), rng() % 3, want1);
    } else if (dice < 62) {
      const SequenceHash start = rng() % 48;
      std::vector<SequenceHash> q;
      for (size_t i = 0, n = 1 + rng() % 6; i < n; ++i) q.push_back((start + i) % 48);
      auto got = g1.pool->match(q);
      auto want = g1.model.match(q);
      ASSERT_EQ(got.size(), want.size()) << "match at op " << op;
      const bool keep = rng() % 2 == 0 && g1.held.size() < 10;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].sequence_hash(), q[i]);
        if (keep) {
          g1.held.push_back({std::move(got[i]), want[i]});
        } else {
          got[i].release();
          g1.model.drop(want[i]);
        }
      }
    } else if (dice < 84) {
      if (!g1.held.empty()) {
        const size_t i = rng() % g1.held.size();
        g1.held[i].block.release();
        g1.model.drop(g1.held[i].generation);
        g1.held.erase(g1.held.begin() + static_cast<ptrdiff_t>(i));
      }
    } else if (dice < 88) {
      if (!g1.filling.empty()) {
        g1.filling.erase(g1.filling.begin() + static_cast<ptrdiff_t>(rng() % g1.filling.size()));
        g1.model.drop_mutable();
      }
    } else if (dice < 97) {
      // Offload: a held G1 block's key registered on G2 (its handle dropped at once).
      if (!g1.held.empty()) {
        const SequenceHash h = g1.held[rng() % g1.held.size()].block.sequence_hash();
        auto b = g2.pool->allocate(1);
        ASSERT_EQ(b.ok(), g2.model.allocate(1, want2));
        if (b) {
          ASSERT_TRUE((*b)[0].begin_fill());
          ASSERT_TRUE((*b)[0].complete(
              SequenceBlock{.block_hash = 0, .sequence_hash = h, .parent_hash = std::nullopt}));
          const uint32_t priority = rng() % 3;
          auto r = g2.pool->register_block((*b)[0], priority);
          ASSERT_TRUE(r);
          const uint64_t g = g2.model.register_block(h, priority, want2);
          r->release();
          g2.model.drop(g);
        }
      }
    } else if (!g1.held.empty()) {
      const Held& h = g1.held[rng() % g1.held.size()];
      g1.pool->remove(h.block);
      g1.model.remove(h.generation, want1);
    }
    g1.check(want1, op);
    g2.check(want2, op);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // The run went through every path: evictions, dedups and removals on both tiers.
  const PoolCounters c1 = g1.pool->counters(), c2 = g2.pool->counters();
  EXPECT_GT(c1.evictions, ops / 100);
  EXPECT_GT(c1.dedups, ops / 100);
  EXPECT_GT(c1.removed, c1.evictions);
  EXPECT_GT(c2.evictions, ops / 100);
  EXPECT_GT(c2.dedups, ops / 100);
}

}  // namespace
}  // namespace kvbm
