// BlockManager on CPU tiers (a System layout stands for G1): offload G1 -> G2 -> G3,
// match across tiers, onboard with every byte checked, and failing closed.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>

#include "kvbm/pool.h"
#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using testing::fill_pattern;
using testing::find_pattern_mismatch;

// chunk = page_size * inner_dim * dtype_bytes; a block is 2 layers x K/V of chunks.
LayoutConfig block_shape(size_t block_kib) {
  return LayoutConfig{.num_blocks = 0,
                      .num_layers = 2,
                      .outer_dim = 2,
                      .page_size = 16,
                      .inner_dim = block_kib * 1024 / (4 * 16 * 2),
                      .dtype_bytes = 2,
                      .alignment = 4096};
}

BlockManagerConfig cpu_config(size_t block_kib, size_t g1, size_t g2, size_t g3) {
  BlockManagerConfig c;
  c.block = block_shape(block_kib);
  c.g1_blocks = g1;
  c.g2_blocks = g2;
  c.g3_blocks = g3;
  c.use_gpu = false;
  c.offload.disk_min_hits = 1;
  c.offload.queue_capacity = 1 << 16;
  c.engine.host_threads = 2;
  return c;
}

// A host block's bytes (FullyContiguous: one range).
unsigned char* block_bytes_of(Layout& l, size_t id) {
  auto r = l.memory_region(id, 0, 0);
  EXPECT_TRUE(r);
  return reinterpret_cast<unsigned char*>(r->addr);
}

std::vector<Token> random_tokens(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Token> t(n);
  for (Token& x : t) x = static_cast<Token>(rng() % 50000);
  return t;
}

// Fills and registers blocks 0..n-1 of `seq` on G1, each with pattern seed = its index.
void register_sequence(BlockManager& m, const TokenSequence& seq, size_t n) {
  const size_t bytes = block_bytes(m.layout(Tier::G1).config());
  auto blocks = m.allocate(n);
  ASSERT_TRUE(blocks) << blocks.error().to_string();
  for (size_t i = 0; i < n; ++i) {
    MutableBlock& b = (*blocks)[i];
    ASSERT_TRUE(b.begin_fill());
    ASSERT_TRUE(b.check_writable());
    fill_pattern(block_bytes_of(m.layout(Tier::G1), b.block_id()), bytes, i);
    ASSERT_TRUE(b.complete(*seq.block(i)));
    ASSERT_TRUE(m.register_block(b));
  }
}

size_t count(const std::vector<Event>& events, EventKind kind, Tier tier) {
  size_t n = 0;
  for (const Event& e : events) n += e.kind == kind && e.tier == tier ? 1 : 0;
  return n;
}

size_t e2e_blocks() {
  if (const char* env = std::getenv("KVBM_POOL_E2E_BLOCKS")) return std::strtoull(env, nullptr, 10);
  return testing::kSanitized ? 512 : 4096;
}

// The test: 4096 blocks of 256 KiB registered, offloaded to G2 and G3, G1 and G2
// emptied, a 3000-block prefix matched on G3 and onboarded, every byte and counter exact.
TEST(BlockManager, CpuTiersEndToEnd) {
  const size_t n = e2e_blocks(), prefix = n * 3000 / 4096;
  constexpr size_t kBytes = 256 << 10;
  EventQueue events;
  BlockManagerConfig config = cpu_config(256, n, n, n);
  config.on_event = events.callback();
  auto m = BlockManager::create(config);
  ASSERT_TRUE(m) << m.error().to_string();
  BlockManager& bm = **m;
  ASSERT_EQ(block_bytes(bm.layout(Tier::G1).config()), kBytes);
  auto seq = TokenSequence::create(16, "e2e");
  ASSERT_TRUE(seq);
  seq->extend(random_tokens(n * 16 + 7, 1));
  register_sequence(bm, *seq, n);
  ASSERT_TRUE(bm.flush());

  auto c = bm.counters();
  EXPECT_EQ(c.g1_to_g2.blocks, n);
  EXPECT_EQ(c.g1_to_g2.bytes, n * kBytes);
  EXPECT_EQ(c.g2_to_g3.blocks, n);
  EXPECT_EQ(c.g2_to_g3.bytes, n * kBytes);
  EXPECT_EQ(c.g1_to_g3.blocks, 0u);
  EXPECT_EQ(c.dropped_offloads, 0u);
  EXPECT_EQ(c.g1_to_g2.failed_blocks + c.g2_to_g3.failed_blocks, 0u);

  // Drop G1's and G2's contents (and scribble over their bytes).
  EXPECT_EQ(bm.pool(Tier::G1).clear_inactive(), n);
  EXPECT_EQ(bm.pool(Tier::G2).clear_inactive(), n);
  std::memset(block_bytes_of(bm.layout(Tier::G1), 0), 0xEE, n * kBytes);
  std::memset(block_bytes_of(bm.layout(Tier::G2), 0), 0xEE, n * kBytes);

  const auto hashes = seq->sequence_hashes().subspan(0, prefix);
  MatchResult match = bm.match(hashes);
  EXPECT_EQ(match.g1.size(), 0u);
  EXPECT_EQ(match.g2.size(), 0u);
  ASSERT_EQ(match.g3.size(), prefix);
  auto on = bm.onboard(match);
  ASSERT_TRUE(on) << on.error().to_string();
  EXPECT_TRUE(on->failed.empty());
  EXPECT_FALSE(on->error.has_value());
  ASSERT_EQ(on->blocks.size(), prefix);
  for (size_t i = 0; i < prefix; ++i) {
    const ImmutableBlock& b = on->blocks[i];
    ASSERT_EQ(b.tier(), Tier::G1);
    ASSERT_EQ(b.sequence_hash(), hashes[i]);
    ASSERT_EQ(find_pattern_mismatch(block_bytes_of(bm.layout(Tier::G1), b.block_id()), kBytes, i),
              SIZE_MAX)
        << "block " << i;
  }

  c = bm.counters();
  EXPECT_EQ(c.lookups, 1u);
  EXPECT_EQ(c.tiers[0].hit_blocks, 0u);
  EXPECT_EQ(c.tiers[1].hit_blocks, 0u);
  EXPECT_EQ(c.tiers[2].hit_blocks, prefix);
  EXPECT_EQ(c.tiers[2].hit_tokens, prefix * 16);
  EXPECT_EQ(c.g3_to_g1.blocks, prefix);
  EXPECT_EQ(c.g3_to_g1.bytes, prefix * kBytes);
  EXPECT_EQ(c.g2_to_g1.blocks, 0u);
  EXPECT_EQ(c.g3_to_g1.failed_blocks, 0u);
  EXPECT_EQ(c.tiers[0].pool.stored, n + prefix);
  EXPECT_EQ(c.tiers[0].pool.removed, n);
  EXPECT_EQ(c.tiers[0].pool.registered_blocks, prefix);
  EXPECT_EQ(c.tiers[1].pool.stored, n);
  EXPECT_EQ(c.tiers[1].pool.removed, n);
  EXPECT_EQ(c.tiers[2].pool.stored, n);
  EXPECT_EQ(c.tiers[2].pool.removed, 0u);
  EXPECT_EQ(c.tiers[2].pool.lookups, 1u);
  EXPECT_EQ(c.tiers[2].pool.matched_blocks, prefix);
  EXPECT_EQ(c.queued_offloads, 0u);
  const auto ev = events.drain();
  EXPECT_EQ(count(ev, EventKind::Stored, Tier::G1), n + prefix);
  EXPECT_EQ(count(ev, EventKind::Removed, Tier::G1), n);
  EXPECT_EQ(count(ev, EventKind::Stored, Tier::G2), n);
  EXPECT_EQ(count(ev, EventKind::Removed, Tier::G2), n);
  EXPECT_EQ(count(ev, EventKind::Stored, Tier::G3), n);
  EXPECT_EQ(count(ev, EventKind::Removed, Tier::G3), 0u);

  // A second lookup now finds the prefix on G1, and the rest on G3.
  MatchResult again = bm.match(seq->sequence_hashes());
  EXPECT_EQ(again.g1.size(), prefix);
  EXPECT_EQ(again.g2.size(), 0u);
  EXPECT_EQ(again.g3.size(), n - prefix);
}

// Fills G2 and G3 with `n` blocks, then empties G1 (and G2 for blocks from `g2_keep` on).
struct FailFixture {
  explicit FailFixture(TierLayouts layouts = {}, size_t n = 8, size_t g2_keep = 0) {
    auto made = BlockManager::create(config(), std::move(layouts));
    EXPECT_TRUE(made) << made.error().to_string();
    m = std::move(*made);
    auto s = TokenSequence::create(16);
    seq.emplace(std::move(*s));
    seq->extend(random_tokens(n * 16, 2));
    register_sequence(*m, *seq, n);
    EXPECT_TRUE(m->flush());
    EXPECT_EQ(m->counters().g2_to_g3.blocks, n);
    m->pool(Tier::G1).clear_inactive();
    {
      auto gone = m->pool(Tier::G2).match(seq->sequence_hashes().subspan(g2_keep));
      for (auto& b : gone) m->pool(Tier::G2).remove(b);
    }
    events.drain();
  }
  BlockManagerConfig config() {
    BlockManagerConfig c = cpu_config(16, 32, 32, 32);
    c.on_event = events.callback();
    return c;
  }
  EventQueue events;
  std::unique_ptr<BlockManager> m;
  std::optional<TokenSequence> seq;
};

DiskStorage& g3_file(BlockManager& m) {
  return dynamic_cast<DiskStorage&>(m.layout(Tier::G3).region(0));
}

TEST(BlockManager, FailsClosedWhenTheDiskFileIsCut) {
  FailFixture f({}, 8, 4);  // blocks 0..3 on G2 and G3, 4..7 on G3 only
  BlockManager& m = *f.m;
  ASSERT_EQ(::truncate(g3_file(m).path().c_str(), 0), 0) << std::strerror(errno);
  MatchResult match = m.match(f.seq->sequence_hashes());
  ASSERT_EQ(match.g2.size(), 4u);
  ASSERT_EQ(match.g3.size(), 4u);
  const size_t free_before = m.pool(Tier::G1).counters().free_blocks;
  auto on = m.onboard(match);
  ASSERT_TRUE(on) << on.error().to_string();
  // The G2 part arrived; every G3 block is named, none returned.
  ASSERT_EQ(on->blocks.size(), 4u);
  const auto hashes = f.seq->sequence_hashes();
  EXPECT_EQ(on->failed, std::vector<SequenceHash>(hashes.begin() + 4, hashes.end()));
  ASSERT_TRUE(on->error.has_value());
  EXPECT_EQ(on->error->code, ErrorCode::Io) << on->error->to_string();
  const size_t bytes = 16 << 10;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(find_pattern_mismatch(block_bytes_of(m.layout(Tier::G1), on->blocks[i].block_id()),
                                    bytes, i),
              SIZE_MAX);
  }
  // Their G3 entries are gone (one Removed each), the failed G1 space is free again.
  for (size_t i = 4; i < 8; ++i) EXPECT_FALSE(m.pool(Tier::G3).contains(hashes[i]));
  const auto ev = f.events.drain();
  EXPECT_EQ(count(ev, EventKind::Removed, Tier::G3), 4u);
  EXPECT_EQ(count(ev, EventKind::Stored, Tier::G1), 4u);
  EXPECT_EQ(m.pool(Tier::G1).counters().free_blocks, free_before - 4);
  const auto c = m.counters();
  EXPECT_EQ(c.tiers[2].hit_blocks, 0u);
  EXPECT_EQ(c.tiers[1].hit_blocks, 4u);
  EXPECT_EQ(c.g3_to_g1.blocks, 0u);
  EXPECT_EQ(c.g3_to_g1.failed_blocks, 4u);
  EXPECT_EQ(c.g2_to_g1.blocks, 4u);
  // The next lookup stops where the bytes stopped.
  MatchResult again = m.match(hashes);
  EXPECT_EQ(again.g1.size(), 4u);
  EXPECT_EQ(again.g2.size() + again.g3.size(), 0u);
}

// A Disk storage over /proc/self/mem: a file offset is an address of this process, so it
// reads and writes `backing` until fail() points it below mmap_min_addr, where every
// access is an I/O error (EIO), as a failing disk gives.
class ProcMemStorage final : public Storage {
 public:
  ProcMemStorage(int fd, void* backing, size_t size)
      : fd_(fd), base_(reinterpret_cast<uint64_t>(backing)), size_(size) {}
  StorageType type() const override { return StorageType::disk(fd_); }
  uint64_t addr() const override { return base_.load(); }
  size_t size() const override { return size_; }
  void fail() { base_.store(4096); }

 private:
  int fd_;
  std::atomic<uint64_t> base_;
  size_t size_;
};

TEST(BlockManager, FailsClosedOnAnIoError) {
  const int fd = ::open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  LayoutConfig g3 = block_shape(16);
  g3.num_blocks = 16;  // 256 KiB: at 4096 it stays under any mapping
  const size_t size = Layout::required_sizes(g3, LayoutKind::FullyContiguous)->front();
  auto backing = SystemAllocator().allocate(size);
  ASSERT_TRUE(backing);
  auto storage = std::make_unique<ProcMemStorage>(fd, backing->data(), size);
  ProcMemStorage* disk = storage.get();
  std::vector<std::unique_ptr<Storage>> regions;
  regions.push_back(std::move(storage));
  auto layout = Layout::create(g3, LayoutKind::FullyContiguous, std::move(regions));
  ASSERT_TRUE(layout) << layout.error().to_string();
  TierLayouts layouts;
  layouts.g3.emplace(std::move(*layout));
  {
    FailFixture f(std::move(layouts), 6, 0);  // G3 only
    BlockManager& m = *f.m;
    disk->fail();
    MatchResult match = m.match(f.seq->sequence_hashes());
    ASSERT_EQ(match.g3.size(), 6u);
    auto on = m.onboard(match);
    ASSERT_TRUE(on) << on.error().to_string();
    EXPECT_TRUE(on->blocks.empty());
    EXPECT_EQ(on->failed.size(), 6u);
    ASSERT_TRUE(on->error.has_value());
    EXPECT_EQ(on->error->code, ErrorCode::Io);
    EXPECT_NE(on->error->message.find("Input/output error"), std::string::npos)
        << on->error->message;
    EXPECT_EQ(count(f.events.drain(), EventKind::Removed, Tier::G3), 6u);
    EXPECT_EQ(m.counters().tiers[2].hit_blocks, 0u);
    EXPECT_EQ(m.pool(Tier::G1).counters().free_blocks, 32u);
    EXPECT_EQ(m.match(f.seq->sequence_hashes()).blocks(), 0u);
  }
  ::close(fd);
}

TEST(BlockManager, OnboardWithoutRoomOnG1LeavesTheMatch) {
  FailFixture f({}, 8, 8);
  BlockManager& m = *f.m;
  auto hog = m.allocate(30);
  ASSERT_TRUE(hog);
  MatchResult match = m.match(f.seq->sequence_hashes());
  ASSERT_EQ(match.g2.size(), 8u);
  EXPECT_ERROR(m.onboard(match), ErrorCode::AllocationFailed, "cannot allocate 8 G1 blocks");
  EXPECT_EQ(match.g2.size(), 8u);
}

TEST(BlockManager, FrequencyFilterHoldsBackTheDiskUntilReuse) {
  BlockManagerConfig config = cpu_config(16, 16, 16, 16);
  config.offload.disk_min_hits = 2;
  auto m = BlockManager::create(config);
  ASSERT_TRUE(m);
  auto seq = TokenSequence::create(16);
  seq->extend(random_tokens(4 * 16, 3));
  register_sequence(**m, *seq, 4);
  ASSERT_TRUE((*m)->flush());
  auto c = (*m)->counters();
  EXPECT_EQ(c.g1_to_g2.blocks, 4u);
  EXPECT_EQ(c.g2_to_g3.blocks, 0u);
  // A second hit (a match, here on G1) of the first two blocks lets them through: their
  // disk copies come from G2.
  { auto hit = (*m)->match(seq->sequence_hashes().subspan(0, 2)); }
  ASSERT_TRUE((*m)->flush());
  c = (*m)->counters();
  EXPECT_EQ(c.g2_to_g3.blocks, 2u);
  EXPECT_TRUE((*m)->pool(Tier::G3).contains(seq->sequence_hashes()[1]));
  EXPECT_FALSE((*m)->pool(Tier::G3).contains(seq->sequence_hashes()[2]));
}

TEST(BlockManager, BypassCopiesG1StraightToDisk) {
  BlockManagerConfig config = cpu_config(16, 16, 16, 16);
  config.offload.g1_to_g3_bypass = true;
  auto m = BlockManager::create(config);
  ASSERT_TRUE(m);
  auto seq = TokenSequence::create(16);
  seq->extend(random_tokens(5 * 16, 4));
  register_sequence(**m, *seq, 5);
  ASSERT_TRUE((*m)->flush());
  auto c = (*m)->counters();
  EXPECT_EQ(c.g1_to_g2.blocks, 5u);
  EXPECT_EQ(c.g1_to_g3.blocks, 5u);
  EXPECT_EQ(c.g2_to_g3.blocks, 0u);
  (*m)->pool(Tier::G1).clear_inactive();
  (*m)->pool(Tier::G2).clear_inactive();
  MatchResult match = (*m)->match(seq->sequence_hashes());
  ASSERT_EQ(match.g3.size(), 5u);
  auto on = (*m)->onboard(match);
  ASSERT_TRUE(on && on->blocks.size() == 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(find_pattern_mismatch(
                  block_bytes_of((*m)->layout(Tier::G1), on->blocks[i].block_id()), 16 << 10, i),
              SIZE_MAX);
  }
}

TEST(BlockManager, FullQueueDropsAndCountsWithoutWaiting) {
  BlockManagerConfig config = cpu_config(16, 64, 64, 0);
  config.offload.queue_capacity = 0;
  auto m = BlockManager::create(config);
  ASSERT_TRUE(m);
  auto seq = TokenSequence::create(16);
  seq->extend(random_tokens(10 * 16, 5));
  register_sequence(**m, *seq, 10);
  ASSERT_TRUE((*m)->flush());
  auto c = (*m)->counters();
  EXPECT_EQ(c.dropped_offloads, 10u);
  EXPECT_EQ(c.g1_to_g2.blocks, 0u);
}

TEST(BlockManager, ConfigErrorsAndEnvironmentOverrides) {
  BlockManagerConfig config = cpu_config(16, 0, 4, 0);
  EXPECT_ERROR(BlockManager::create(config), ErrorCode::InvalidArgument, "g1_blocks must be > 0");
  config.g1_blocks = 4;
  TierLayouts wrong;
  LayoutConfig other = block_shape(32);
  other.num_blocks = 4;
  auto l = Layout::allocate(other, LayoutKind::FullyContiguous, SystemAllocator());
  ASSERT_TRUE(l);
  wrong.g2.emplace(std::move(*l));
  EXPECT_ERROR(BlockManager::create(config, std::move(wrong)), ErrorCode::InvalidArgument,
               "the G2 layout's blocks differ");

  ::setenv("KVBM_CPU_CACHE_GB", "0.5", 1);
  ::setenv("KVBM_DISK_CACHE_GB", "2", 1);
  ASSERT_TRUE(apply_env_overrides(config));
  EXPECT_EQ(config.g2_blocks, (size_t{1} << 29) / (16 << 10));
  EXPECT_EQ(config.g3_blocks, (size_t{2} << 30) / (16 << 10));
  ::setenv("KVBM_DISK_CACHE_GB", "lots", 1);
  EXPECT_ERROR(apply_env_overrides(config), ErrorCode::InvalidArgument,
               "KVBM_DISK_CACHE_GB='lots' is not a size in GiB");
  ::unsetenv("KVBM_CPU_CACHE_GB");
  ::unsetenv("KVBM_DISK_CACHE_GB");
}

}  // namespace
}  // namespace kvbm
