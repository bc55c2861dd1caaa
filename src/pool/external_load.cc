// ExternalG1::load and ExternalLoad: matched G2/G3 blocks into engine-owned G1 ids, one
// engine request per layer and source tier, failing closed.
#include <algorithm>

#include "pool/external_g1_state.h"

namespace kvbm {

namespace {

using Part = ExternalLoad::State::Part;

// Splits the match into its G2 and G3 parts and their engine ids; ids past the match go to
// unmatched_ids.
void assign(ExternalLoad::State& st, MatchResult& match, std::span<const size_t> ids) {
  size_t next = match.g1.size();  // empty: nothing registers on an external G1's pool
  for (size_t i = 0; i < next; ++i) st.unmatched_ids.push_back(ids[i]);
  match.g1.clear();
  std::vector<ImmutableBlock>* from[] = {&match.g2, &match.g3};
  for (size_t p = 0; p < 2; ++p) {
    Part& part = st.parts[p];
    part.src = std::move(*from[p]);
    for (size_t k = 0; k < part.src.size(); ++k) part.dst_ids.push_back(ids[next++]);
  }
  for (; next < ids.size(); ++next) st.unmatched_ids.push_back(ids[next]);
}

}  // namespace

Result<ExternalLoad> ExternalG1::load(std::span<const SequenceHash> hashes,
                                      std::span<const size_t> engine_ids) {
  if (engine_ids.size() != hashes.size()) {
    return err(ErrorCode::InvalidArgument, engine_ids.size(), " engine block ids for ",
               hashes.size(), " hashes");
  }
  const size_t g1_blocks = engine_blocks();
  for (size_t id : engine_ids) {
    if (id >= g1_blocks) {
      return err(ErrorCode::OutOfBounds, "engine block id ", id, " is past the ", g1_blocks,
                 " blocks of G1");
    }
  }
  auto st = std::make_unique<ExternalLoad::State>();
  st->m = s_->m;
  MatchResult match = s_->manager->match(hashes);
  assign(*st, match, engine_ids);
  const size_t layers = num_layers();
  st->layers.resize(layers);
  const std::vector<Layout>& g1 = s_->layers[static_cast<size_t>(Tier::G1)];
  std::vector<size_t> src_ids[2];
  for (size_t p = 0; p < 2; ++p) {
    for (const ImmutableBlock& b : st->parts[p].src) src_ids[p].push_back(b.block_id());
  }
  // Layer order: layer l from G2 and from G3 before layer l + 1 from either.
  for (size_t l = 0; l < layers; ++l) {
    for (size_t p = 0; p < 2; ++p) {
      Part& part = st->parts[p];
      if (part.src.empty() || part.error) continue;
      const Layout& src = s_->layers[static_cast<size_t>(part.tier)][l];
      auto t = s_->m->engine->copy(src, src_ids[p], g1[l], part.dst_ids);
      if (!t) {
        part.error = t.error();
        continue;
      }
      part.bytes += t->bytes();
      st->layers[l].push_back(ExternalLoad::State::Copy{p, std::move(*t), std::nullopt});
    }
  }
  return ExternalLoad(std::move(st));
}

// ---- ExternalLoad -----------------------------------------------------------------------

ExternalLoad::ExternalLoad(std::unique_ptr<State> s) : s_(std::move(s)) {}
ExternalLoad::ExternalLoad(ExternalLoad&&) noexcept = default;
ExternalLoad& ExternalLoad::operator=(ExternalLoad&&) noexcept = default;
ExternalLoad::~ExternalLoad() = default;

size_t ExternalLoad::num_layers() const {
  return s_->layers.size();
}
size_t ExternalLoad::blocks() const {
  return s_->parts[0].dst_ids.size() + s_->parts[1].dst_ids.size();
}

Status ExternalLoad::wait_layer(size_t layer) {
  if (layer >= s_->layers.size()) {
    return err(ErrorCode::OutOfBounds, "layer ", layer, " is past the ", s_->layers.size(),
               " layers");
  }
  Status first;
  for (State::Copy& c : s_->layers[layer]) {
    if (!c.status) {
      c.status = c.transfer->wait();
      Part& part = s_->parts[c.part];
      if (!*c.status && !part.error) part.error = c.status->error();
    }
    if (!*c.status && first) first = *c.status;
  }
  // A part that failed to start a layer's request: that layer is not there either.
  for (const Part& part : s_->parts) {
    if (part.error && first && !part.src.empty()) first = *part.error;
  }
  return first;
}

bool ExternalLoad::ready() {
  if (s_->finished) return true;
  for (auto& layer : s_->layers) {
    for (State::Copy& c : layer) {
      if (!c.status && !c.transfer->ready()) return false;
    }
  }
  return true;
}

LoadResult ExternalLoad::finish() {
  State& s = *s_;
  if (s.finished) return s.result;
  for (size_t l = 0; l < s.layers.size(); ++l) (void)wait_layer(l);
  s.finished = true;
  const uint64_t page = s.m->config.block.page_size;
  for (Part& part : s.parts) {
    const size_t n = part.src.size();
    if (n == 0) continue;
    if (part.error) {
      s.m->counters.moved(part.tier, Tier::G1, 0, 0, n);
      // Fail closed: blocks whose copy failed are not served again from this tier.
      for (const ImmutableBlock& b : part.src) s.m->tier(part.tier).pool->remove(b);
      s.result.failed_ids.insert(s.result.failed_ids.end(), part.dst_ids.begin(),
                                 part.dst_ids.end());
      if (!s.result.error) s.result.error = part.error;
    } else {
      s.m->counters.moved(part.tier, Tier::G1, n, part.bytes, 0);
      s.m->counters.hits(part.tier, n, n * page);
      s.result.loaded += n;
    }
    part.src.clear();
  }
  s.result.failed_ids.insert(s.result.failed_ids.end(), s.unmatched_ids.begin(),
                             s.unmatched_ids.end());
  std::sort(s.result.failed_ids.begin(), s.result.failed_ids.end());
  return s.result;
}

}  // namespace kvbm
