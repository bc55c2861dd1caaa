// ExternalG1 on CPU tiers: an engine-owned G1 (a LayerSeparate, outer-major System layout
// standing for vLLM's per-layer paged tensors), save into G2, side-effect free peek,
// layer-wise load into other engine ids with every byte checked, and failing closed.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <random>

#include "kvbm/pool.h"
#include "kvbm/pool/external_g1.h"
#include "kvbm/pool/layout_alias.h"
#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

constexpr size_t kLayers = 3, kEngineBlocks = 16;

LayoutConfig shape(size_t blocks) {
  return LayoutConfig{.num_blocks = blocks,
                      .num_layers = kLayers,
                      .outer_dim = 2,
                      .page_size = 16,
                      .inner_dim = 32,
                      .dtype_bytes = 2,
                      .alignment = 4096};
}

struct Engine {
  std::optional<Layout> kv;  // the engine's G1: owned here, given to the manager as an alias
  EventQueue events;
  std::unique_ptr<BlockManager> m;
  std::unique_ptr<ExternalG1> x;

  explicit Engine(size_t g2, size_t g3, LayoutKind kind = LayoutKind::LayerSeparate) {
    auto l = Layout::allocate(shape(kEngineBlocks), LayoutKind::LayerSeparate, SystemAllocator(),
                              LayerOrder::OuterMajor);
    EXPECT_TRUE(l) << l.error().to_string();
    kv.emplace(std::move(*l));
    BlockManagerConfig c;
    c.block = shape(0);
    c.kind = kind;
    c.g2_blocks = g2;
    c.g3_blocks = g3;
    c.use_gpu = false;
    c.offload.disk_min_hits = 1;
    c.engine.host_threads = 2;
    c.on_event = events.callback();
    auto alias = alias_layout(*kv);
    EXPECT_TRUE(alias) << alias.error().to_string();
    TierLayouts given;
    given.g1 = std::move(*alias);
    auto made = BlockManager::create(c, std::move(given));
    EXPECT_TRUE(made) << made.error().to_string();
    m = std::move(*made);
  }
  void attach() {
    auto x1 = ExternalG1::create(*m);
    ASSERT_TRUE(x1) << x1.error().to_string();
    x = std::move(*x1);
  }
  // Every chunk of engine block `id` filled with a byte of (seed, layer, outer).
  void fill(size_t id, uint8_t seed) {
    for (size_t l = 0; l < kLayers; ++l) {
      for (size_t o = 0; o < 2; ++o) {
        auto r = kv->memory_region(id, l, o);
        std::memset(reinterpret_cast<void*>(r->addr), seed * 7 + l * 2 + o, r->size);
      }
    }
  }
  bool holds(size_t id, uint8_t seed, size_t layer) {
    for (size_t o = 0; o < 2; ++o) {
      auto r = kv->memory_region(id, layer, o);
      const auto* p = reinterpret_cast<const uint8_t*>(r->addr);
      for (size_t i = 0; i < r->size; ++i) {
        if (p[i] != static_cast<uint8_t>(seed * 7 + layer * 2 + o)) return false;
      }
    }
    return true;
  }
};

TokenSequence sequence(size_t blocks, uint64_t seed) {
  auto s = TokenSequence::create(16);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < blocks * 16; ++i) s->append(static_cast<Token>(rng() % 50000));
  return std::move(*s);
}

std::vector<SequenceBlock> keys_of(const TokenSequence& s) {
  std::vector<SequenceBlock> k;
  for (size_t i = 0; i < s.num_blocks(); ++i) k.push_back(*s.block(i));
  return k;
}

TEST(LayoutAlias, RefusesWhatItCannotAlias) {
  auto full = Layout::allocate(shape(2), LayoutKind::FullyContiguous, SystemAllocator());
  ASSERT_TRUE(full);
  EXPECT_ERROR(layer_aliases(*full), ErrorCode::InvalidArgument, "LayerSeparate");
  auto a = alias_layout(*full);
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_EQ(a->region(0).addr(), full->region(0).addr());
  EXPECT_TRUE(a->same_shape(*full));
}

TEST(ExternalG1, RefusesManagersItCannotLoadLayerWise) {
  Engine no_g2(0, 0);
  EXPECT_ERROR(ExternalG1::create(*no_g2.m), ErrorCode::InvalidArgument, "G2 tier");
  Engine contiguous(8, 0, LayoutKind::FullyContiguous);
  EXPECT_ERROR(ExternalG1::create(*contiguous.m), ErrorCode::InvalidArgument,
               "G2 layout must be LayerSeparate");
}

TEST(ExternalG1, SavesPeeksWithoutSideEffectsAndLoadsLayerByLayer) {
  Engine e(8, 0);
  e.attach();
  const TokenSequence seq = sequence(4, 1);
  const std::vector<size_t> src = {3, 9, 1, 12};
  for (size_t i = 0; i < 4; ++i) e.fill(src[i], static_cast<uint8_t>(i + 1));
  EXPECT_EQ(e.x->peek(seq.sequence_hashes()).blocks(), 0u);
  auto save = e.x->save(src, keys_of(seq));
  ASSERT_TRUE(save) << save.error().to_string();
  SaveResult sr = save->finish();
  EXPECT_EQ(sr.saved, 4u);
  EXPECT_FALSE(sr.error.has_value());
  EXPECT_EQ(e.x->save(src, keys_of(seq))->finish().present, 4u);  // on G2 already

  const BlockManagerCounters before = e.m->counters();
  const size_t events_before = e.events.drain().size();
  ExternalPeek p = e.x->peek(seq.sequence_hashes());
  EXPECT_EQ(p.g2, 4u);
  EXPECT_EQ(e.x->peek(seq.sequence_hashes().subspan(0, 2)).blocks(), 2u);
  const BlockManagerCounters after = e.m->counters();
  EXPECT_EQ(after.lookups, before.lookups);
  EXPECT_EQ(after.tiers[1].pool.lookups, before.tiers[1].pool.lookups);
  EXPECT_EQ(after.tiers[1].pool.active_blocks, 0u);
  EXPECT_EQ(e.events.drain().size(), 0u);
  EXPECT_GT(events_before, 0u);

  // Load the first three into other engine ids; the fourth id asks past the match.
  const std::vector<size_t> dst = {0, 5, 7, 15};
  std::vector<SequenceHash> want(seq.sequence_hashes().begin(), seq.sequence_hashes().end());
  want[3] ^= 1;  // not registered anywhere
  auto load = e.x->load(want, dst);
  ASSERT_TRUE(load) << load.error().to_string();
  EXPECT_EQ(load->blocks(), 3u);
  ASSERT_TRUE(load->wait_layer(0));
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(e.holds(dst[i], static_cast<uint8_t>(i + 1), 0));
  EXPECT_ERROR(load->wait_layer(kLayers), ErrorCode::OutOfBounds, "layer 3");
  LoadResult lr = load->finish();
  EXPECT_EQ(lr.loaded, 3u);
  EXPECT_EQ(lr.failed_ids, std::vector<size_t>{15});
  for (size_t l = 0; l < kLayers; ++l) {
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(e.holds(dst[i], static_cast<uint8_t>(i + 1), l));
  }
  const BlockManagerCounters c = e.m->counters();
  EXPECT_EQ(c.g1_to_g2.blocks, 4u);
  EXPECT_EQ(c.g2_to_g1.blocks, 3u);
  EXPECT_EQ(c.g2_to_g1.bytes, 3 * block_bytes(shape(0)));
  EXPECT_EQ(c.tiers[1].hit_tokens, 3u * 16);
  EXPECT_EQ(c.lookups, before.lookups + 1);
  EXPECT_EQ(c.tiers[1].pool.active_blocks, 0u);  // sources released
}

TEST(ExternalG1, RefusesBadIds) {
  Engine e(8, 0);
  e.attach();
  const TokenSequence seq = sequence(2, 2);
  const std::vector<size_t> ids = {0, kEngineBlocks};
  EXPECT_ERROR(e.x->save(ids, keys_of(seq)), ErrorCode::OutOfBounds, "engine block id 16");
  EXPECT_ERROR(e.x->load(seq.sequence_hashes(), ids), ErrorCode::OutOfBounds, "engine block id 16");
  EXPECT_ERROR(e.x->load(seq.sequence_hashes(), std::vector<size_t>{0}), ErrorCode::InvalidArgument,
               "1 engine block ids for 2");
}

TEST(ExternalG1, FailsClosedWhenTheDiskFilesAreCut) {
  Engine e(8, 8);
  e.attach();
  const TokenSequence seq = sequence(4, 3);
  const std::vector<size_t> src = {0, 1, 2, 3};
  for (size_t i = 0; i < 4; ++i) e.fill(src[i], static_cast<uint8_t>(i + 1));
  ASSERT_EQ(e.x->save(src, keys_of(seq))->finish().saved, 4u);
  ASSERT_TRUE(e.m->flush());
  ASSERT_EQ(e.m->counters().g2_to_g3.blocks, 4u);
  {  // blocks 2 and 3 on G3 only
    auto gone = e.m->pool(Tier::G2).match(seq.sequence_hashes().subspan(2));
    for (auto& b : gone) e.m->pool(Tier::G2).remove(b);
  }
  const Layout& g3 = e.m->layout(Tier::G3);
  for (size_t i = 0; i < g3.num_regions(); ++i) {
    auto& f = dynamic_cast<const DiskStorage&>(g3.region(i));
    ASSERT_EQ(::truncate(f.path().c_str(), 0), 0) << std::strerror(errno);
  }
  ExternalPeek p = e.x->peek(seq.sequence_hashes());
  EXPECT_EQ(p.g2, 2u);
  EXPECT_EQ(p.g3, 2u);
  auto load = e.x->load(seq.sequence_hashes(), std::vector<size_t>{8, 9, 10, 11});
  ASSERT_TRUE(load);
  EXPECT_TRUE(load->wait_layer(0).ok() == false);  // layer 0's G3 part failed
  LoadResult lr = load->finish();
  EXPECT_EQ(lr.loaded, 2u);
  EXPECT_EQ(lr.failed_ids, (std::vector<size_t>{10, 11}));
  ASSERT_TRUE(lr.error.has_value());
  EXPECT_TRUE(e.holds(8, 1, 1) && e.holds(9, 2, 2));
  EXPECT_EQ(e.x->peek(seq.sequence_hashes()).blocks(), 2u);  // removed from G3
  EXPECT_EQ(e.m->counters().g3_to_g1.failed_blocks, 2u);
}

}  // namespace
}  // namespace kvbm
