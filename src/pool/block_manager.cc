#include "kvbm/pool/block_manager.h"

#include "kvbm/cuda.h"
#include "kvbm/storage.h"
#include "pool/manager_state.h"

namespace kvbm {

using detail::TierCopy;
using detail::TierStore;

namespace {

bool same_blocks(const LayoutConfig& a, const LayoutConfig& b) {
  return a.num_layers == b.num_layers && a.outer_dim == b.outer_dim && a.page_size == b.page_size &&
         a.inner_dim == b.inner_dim && a.dtype_bytes == b.dtype_bytes;
}

// The layout of one tier: the one given, or one allocated in the tier's memory.
Result<std::optional<Layout>> tier_layout(const BlockManagerConfig& config, Tier tier,
                                          std::optional<Layout> given, bool gpu) {
  if (given) {
    if (!same_blocks(given->config(), config.block)) {
      return err(ErrorCode::InvalidArgument, "the ", to_string(tier),
                 " layout's blocks differ from config.block (layers, outer, page, inner, dtype)");
    }
    return given;
  }
  LayoutConfig c = config.block;
  c.num_blocks = tier == Tier::G1   ? config.g1_blocks
                 : tier == Tier::G2 ? config.g2_blocks
                                    : config.g3_blocks;
  if (c.num_blocks == 0) {
    if (tier == Tier::G1) return err(ErrorCode::InvalidArgument, "g1_blocks must be > 0");
    return std::optional<Layout>();
  }
  Result<Layout> l = err(ErrorCode::Internal, "no tier");
  if (tier == Tier::G3) {
    l = Layout::allocate(c, config.kind, DiskAllocator(config.disk_dir));
  } else if (gpu && tier == Tier::G1) {
    l = Layout::allocate(c, config.kind, DeviceAllocator(config.device));
  } else if (gpu) {
    l = Layout::allocate(c, config.kind, PinnedAllocator());
  } else {
    l = Layout::allocate(c, config.kind, SystemAllocator());
  }
  if (!l) return l.error();
  return std::optional<Layout>(std::move(*l));
}

}  // namespace

Result<std::unique_ptr<BlockManager>> BlockManager::create(BlockManagerConfig config,
                                                           TierLayouts layouts) {
  LayoutConfig one = config.block;
  one.num_blocks = 1;
  KVBM_TRY(one.validate());
  auto state = std::make_unique<State>();
  auto engine = TransferEngine::create(config.engine);
  if (!engine) return engine.error();
  state->engine = std::move(*engine);
  const bool gpu = config.use_gpu && cuda_device_count().value_or(0) > 0;
  std::optional<Layout>* given[] = {&layouts.g1, &layouts.g2, &layouts.g3};
  for (size_t i = 0; i < kNumTiers; ++i) {
    const Tier t = static_cast<Tier>(i);
    auto layout = tier_layout(config, t, std::move(*given[i]), gpu);
    if (!layout) return layout.error();
    if (!*layout) continue;
    auto pool = BlockPool::create(t, (*layout)->config().num_blocks, config.on_event);
    if (!pool) return pool.error();
    state->tiers[i] = std::make_unique<TierStore>(
        TierStore{.tier = t, .layout = std::move(**layout), .pool = std::move(*pool)});
  }
  // G2 as fixed buffers of the engine's io_uring: disk copies skip pinning its pages.
  if (state->tiers[1] && state->tiers[2] && !state->tiers[1]->layout.is_remote()) {
    (void)state->engine->register_host_layout(state->tiers[1]->layout);
  }
  state->config = std::move(config);
  state->offload = std::make_unique<detail::OffloadManager>(state->tiers, *state->engine,
                                                            state->config.offload, state->counters);
  return std::unique_ptr<BlockManager>(new BlockManager(std::move(state)));
}

BlockManager::BlockManager(std::unique_ptr<State> state) : state_(std::move(state)) {}
BlockManager::~BlockManager() = default;

bool BlockManager::has_tier(Tier tier) const {
  return detail::tier_of(state_->tiers, tier) != nullptr;
}
BlockPool& BlockManager::pool(Tier tier) {
  return *state_->tier(tier).pool;
}
const Layout& BlockManager::layout(Tier tier) const {
  return state_->tier(tier).layout;
}
Layout& BlockManager::layout(Tier tier) {
  return state_->tier(tier).layout;
}
TransferEngine& BlockManager::engine() {
  return *state_->engine;
}
uint32_t BlockManager::block_size() const {
  return static_cast<uint32_t>(state_->config.block.page_size);
}

Result<std::vector<MutableBlock>> BlockManager::allocate(size_t n) {
  return pool(Tier::G1).allocate(n);
}

Result<ImmutableBlock> BlockManager::register_block(MutableBlock& block, uint32_t priority) {
  auto r = pool(Tier::G1).register_block(block, priority);
  if (r) state_->offload->registered(*r);
  return r;
}

MatchResult BlockManager::match(std::span<const SequenceHash> hashes) {
  MatchResult m;
  state_->counters.lookup();
  m.g1 = pool(Tier::G1).match(hashes);
  state_->counters.hits(Tier::G1, m.g1.size(), m.g1.size() * block_size());
  size_t done = m.g1.size();
  if (has_tier(Tier::G2) && done < hashes.size()) {
    m.g2 = pool(Tier::G2).match(hashes.subspan(done));
    done += m.g2.size();
  }
  if (has_tier(Tier::G3) && done < hashes.size()) {
    m.g3 = pool(Tier::G3).match(hashes.subspan(done));
  }
  state_->offload->matched(m);
  return m;
}

Status BlockManager::flush(std::chrono::milliseconds timeout) {
  return state_->offload->flush(timeout);
}

BlockManagerCounters BlockManager::counters() const {
  BlockManagerCounters c = state_->counters.snapshot();
  for (size_t i = 0; i < kNumTiers; ++i) {
    if (state_->tiers[i]) c.tiers[i].pool = state_->tiers[i]->pool->counters();
  }
  c.queued_offloads = state_->offload->queued();
  return c;
}

}  // namespace kvbm
