// ExternalG1: create, peek and save (loads: external_load.cc).
#include "kvbm/pool/external_g1.h"

#include <unordered_set>

#include "kvbm/pool/layout_alias.h"
#include "pool/external_g1_state.h"

namespace kvbm {

namespace {

Status check_ids(std::span<const size_t> ids, size_t keys, size_t engine_blocks) {
  if (ids.size() != keys) {
    return err(ErrorCode::InvalidArgument, ids.size(), " engine block ids for ", keys, " blocks");
  }
  for (size_t id : ids) {
    if (id >= engine_blocks) {
      return err(ErrorCode::OutOfBounds, "engine block id ", id, " is past the ", engine_blocks,
                 " blocks of G1");
    }
  }
  return {};
}

}  // namespace

ExternalG1::ExternalG1(std::unique_ptr<State> s) : s_(std::move(s)) {}
ExternalG1::~ExternalG1() = default;

Result<std::unique_ptr<ExternalG1>> ExternalG1::create(BlockManager& manager) {
  if (!manager.has_tier(Tier::G2)) {
    return err(ErrorCode::InvalidArgument, "an external G1 needs a G2 tier to save into");
  }
  auto s = std::make_unique<State>();
  s->manager = &manager;
  s->m = manager.state_.get();
  for (Tier t : {Tier::G1, Tier::G2, Tier::G3}) {
    if (!manager.has_tier(t)) continue;
    const Layout& l = manager.layout(t);
    if (l.kind() != LayoutKind::LayerSeparate) {
      return err(ErrorCode::InvalidArgument, "the ", to_string(t),
                 " layout must be LayerSeparate for layer-wise loads, not ", to_string(l.kind()));
    }
    auto views = layer_aliases(l);
    if (!views) return views.error();
    s->layers[static_cast<size_t>(t)] = std::move(*views);
  }
  return std::unique_ptr<ExternalG1>(new ExternalG1(std::move(s)));
}

size_t ExternalG1::num_layers() const {
  return s_->m->config.block.num_layers;
}
size_t ExternalG1::engine_blocks() const {
  return s_->m->tier(Tier::G1).layout.config().num_blocks;
}

ExternalPeek ExternalG1::peek(std::span<const SequenceHash> hashes) const {
  ExternalPeek p;
  const BlockPool& g2 = *s_->m->tier(Tier::G2).pool;
  while (p.g2 < hashes.size() && g2.contains(hashes[p.g2])) ++p.g2;
  const detail::TierStore* g3 = detail::tier_of(s_->m->tiers, Tier::G3);
  if (g3 == nullptr) return p;
  while (p.g2 + p.g3 < hashes.size() && g3->pool->contains(hashes[p.g2 + p.g3])) ++p.g3;
  return p;
}

Result<ExternalSave> ExternalG1::save(std::span<const size_t> engine_ids,
                                      std::span<const SequenceBlock> keys) {
  KVBM_TRY(check_ids(engine_ids, keys.size(), engine_blocks()));
  auto st = std::make_unique<ExternalSave::State>();
  st->m = s_->m;
  detail::TierStore& g2 = s_->m->tier(Tier::G2);
  // Once per hash, and only where G2 lacks it.
  std::vector<size_t> src;
  std::unordered_set<SequenceHash> seen;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!seen.insert(keys[i].sequence_hash).second || g2.pool->contains(keys[i].sequence_hash)) {
      ++st->result.present;
      continue;
    }
    src.push_back(engine_ids[i]);
    st->keys.push_back(keys[i]);
  }
  if (src.empty()) return ExternalSave(std::move(st));
  auto space = g2.pool->allocate(src.size());
  if (!space) {
    // Take what there is room for; the rest is dropped.
    const PoolCounters c = g2.pool->counters();
    const size_t room = std::min(src.size(), c.free_blocks + c.inactive_blocks);
    if (room > 0) space = g2.pool->allocate(room);
    const size_t got = space ? room : 0;
    st->result.dropped = src.size() - got;
    s_->m->counters.dropped(st->result.dropped);
    src.resize(got);
    st->keys.resize(got);
    if (got == 0) return ExternalSave(std::move(st));
  }
  std::vector<size_t> dst;
  for (MutableBlock& b : *space) {
    KVBM_TRY(b.begin_fill());
    dst.push_back(b.block_id());
  }
  auto t = s_->m->engine->copy(s_->m->tier(Tier::G1).layout, src, g2.layout, dst);
  if (!t) return t.error();
  st->dst = std::move(*space);
  st->transfer.emplace(std::move(*t));
  return ExternalSave(std::move(st));
}

// ---- ExternalSave -----------------------------------------------------------------------

ExternalSave::ExternalSave(std::unique_ptr<State> s) : s_(std::move(s)) {}
ExternalSave::ExternalSave(ExternalSave&&) noexcept = default;
ExternalSave& ExternalSave::operator=(ExternalSave&&) noexcept = default;
ExternalSave::~ExternalSave() = default;

bool ExternalSave::ready() {
  return s_->finished || !s_->transfer || s_->transfer->ready();
}

SaveResult ExternalSave::finish() {
  State& s = *s_;
  if (s.finished) return s.result;
  s.finished = true;
  if (!s.transfer) return s.result;
  const size_t n = s.dst.size();
  const uint64_t bytes = s.transfer->bytes();
  if (auto st = s.transfer->wait(); !st) {
    s.dst.clear();
    s.m->counters.moved(Tier::G1, Tier::G2, 0, 0, n);
    s.result.dropped += n;
    s.result.error = st.error();
    return s.result;
  }
  BlockPool& g2 = *s.m->tier(Tier::G2).pool;
  for (size_t i = 0; i < n; ++i) {
    const Status c = s.dst[i].complete(s.keys[i]);
    Result<ImmutableBlock> r = c ? g2.register_block(s.dst[i]) : Result<ImmutableBlock>(c.error());
    if (!r) {  // not expected: fresh blocks, checked keys
      ++s.result.dropped;
      if (!s.result.error) s.result.error = r.error();
      continue;
    }
    ++s.result.saved;
    s.m->offload->registered(*r);
  }
  s.dst.clear();
  s.m->counters.moved(Tier::G1, Tier::G2, n, bytes, 0);
  return s.result;
}

}  // namespace kvbm
