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

}  // namespace

Result<OnboardResult> BlockManager::onboard(MatchResult& match) {
  OnboardResult out;
  const size_t n2 = match.g2.size(), n3 = match.g3.size();
  if (n2 + n3 > 0) {
    auto space = pool(Tier::G1).allocate(n2 + n3);
    if (!space) return space.error();
    std::vector<MutableBlock> to2(std::make_move_iterator(space->begin()),
                                  std::make_move_iterator(space->begin() + n2));
    std::vector<MutableBlock> to3(std::make_move_iterator(space->begin() + n2),
                                  std::make_move_iterator(space->end()));
    Part parts[] = {{Tier::G2, &match.g2, {}, {}}, {Tier::G3, &match.g3, {}, {}}};
    std::vector<MutableBlock>* dst[] = {&to2, &to3};
    for (size_t i = 0; i < 2; ++i) {
      if (parts[i].sources->empty()) continue;
      auto c = TierCopy::start(*state_->engine, state_->tier(parts[i].tier), *parts[i].sources,
                               state_->tier(Tier::G1), std::move(*dst[i]));
      if (c) {
        parts[i].copy.emplace(std::move(*c));
      } else {
        parts[i].error = c.error();
      }
    }
    out.blocks = std::move(match.g1);
    bool prefix = true;  // every block so far arrived
    for (Part& part : parts) {
      Result<std::vector<ImmutableBlock>> landed =
          part.copy ? part.copy->finish()
                    : Result<std::vector<ImmutableBlock>>(
                          part.error.value_or(Error{ErrorCode::Internal, ""}));
      if (!part.copy && !part.error) continue;
      const std::vector<ImmutableBlock>& src = part.copy ? part.copy->sources() : *part.sources;
      const size_t n = src.size();
      if (landed) {
        state_->counters.moved(part.tier, Tier::G1, n, part.copy->bytes(), 0);
        state_->counters.hits(part.tier, n, n * block_size());
        if (prefix) {
          for (ImmutableBlock& b : *landed) out.blocks.push_back(std::move(b));
        }
        continue;
      }
      // Fail closed: name every block of the request and drop it from its tier.
      prefix = false;
      state_->counters.moved(part.tier, Tier::G1, 0, 0, n);
      for (const ImmutableBlock& b : src) {
        out.failed.push_back(b.sequence_hash());
        pool(part.tier).remove(b);
      }
      if (!out.error) out.error = landed.error();
    }
  } else {
    out.blocks = std::move(match.g1);
  }
  match.g2.clear();
  match.g3.clear();
  return out;
}

}  // namespace kvbm
