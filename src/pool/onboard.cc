// BlockManager::onboard: a match's G2 and G3 blocks into newly allocated G1 blocks, one
// engine request per source tier, failing closed.
#include <optional>

#include "pool/manager_state.h"
#include "pool/tier_copy.h"

namespace kvbm {

using detail::TierCopy;

namespace {

// One source tier's part of an onboard: started, or why it could not start.
struct Part {
  Tier tier;
  std::vector<ImmutableBlock>* sources;  // the match's blocks (still there if not started)
  std::optional<TierCopy> copy;
  std::optional<Error> error;
};

// Waits for one part. Blocks that arrived are registered on G1 and, while every block before
// them arrived too, join the result (and count as hits). A failed part fails closed: each of
// its blocks is named and removed from its tier.
void finish_part(BlockManager::State& state, Part& part, OnboardResult& out, bool& prefix) {
  Result<std::vector<ImmutableBlock>> landed = std::vector<ImmutableBlock>();
  if (part.copy) {
    landed = part.copy->finish();
  } else {
    landed = *part.error;
  }
  const std::vector<ImmutableBlock>& src = part.copy ? part.copy->sources() : *part.sources;
  const size_t n = src.size();
  if (landed) {
    state.counters.moved(part.tier, Tier::G1, n, part.copy->bytes(), 0);
    if (!prefix) return;  // registered on G1, but not part of this prefix
    state.counters.hits(part.tier, n, n * state.config.block.page_size);
    for (ImmutableBlock& b : *landed) out.blocks.push_back(std::move(b));
    return;
  }
  prefix = false;
  state.counters.moved(part.tier, Tier::G1, 0, 0, n);
  for (const ImmutableBlock& b : src) {
    out.failed.push_back(b.sequence_hash());
    state.tier(part.tier).pool->remove(b);
  }
  if (!out.error) out.error = landed.error();
}

}  // namespace

Result<OnboardResult> BlockManager::onboard(MatchResult& match) {
  OnboardResult out;
  const size_t n2 = match.g2.size(), n3 = match.g3.size();
  if (n2 + n3 > 0) {
    auto space = pool(Tier::G1).allocate(n2 + n3);
    if (!space) return space.error();
    std::vector<MutableBlock> dst[2];
    dst[0].assign(std::make_move_iterator(space->begin()),
                  std::make_move_iterator(space->begin() + n2));
    dst[1].assign(std::make_move_iterator(space->begin() + n2),
                  std::make_move_iterator(space->end()));
    Part parts[] = {{Tier::G2, &match.g2, {}, {}}, {Tier::G3, &match.g3, {}, {}}};
    // Both requests start before either is waited for.
    for (size_t i = 0; i < 2; ++i) {
      if (parts[i].sources->empty()) continue;
      auto c = TierCopy::start(*state_->engine, state_->tier(parts[i].tier), *parts[i].sources,
                               state_->tier(Tier::G1), std::move(dst[i]));
      if (c) {
        parts[i].copy.emplace(std::move(*c));
      } else {
        parts[i].error = c.error();
      }
    }
    out.blocks = std::move(match.g1);
    bool prefix = true;
    for (Part& part : parts) {
      if (part.copy || part.error) finish_part(*state_, part, out, prefix);
    }
  } else {
    out.blocks = std::move(match.g1);
  }
  match.g2.clear();
  match.g3.clear();
  return out;
}

}  // namespace kvbm
