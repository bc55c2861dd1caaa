// The prefix-reuse act of `kvbm demo`: what an inference server gets from the block
// manager. A's blocks leave G1 under pressure, B (sharing A's first blocks) finds them on a
// lower tier, brings them back in one request per tier, and every byte is checked.
#include "demo_reuse.h"

#include <chrono>
#include <memory>
#include <numeric>
#include <optional>

#include "demo_blocks.h"
#include "kvbm/cuda.h"
#include "kvbm/pool.h"
#include "kvbm/storage.h"
#include "table.h"

namespace kvbm::tools::demo {
namespace {

constexpr size_t kG1 = 64, kG2 = 64, kG3 = 256;
constexpr size_t kA = 48, kShared = 40;  // A's blocks; B's prefix shared with A
constexpr uint64_t kSeed = 0x7265;

std::vector<size_t> iota_ids(size_t n) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

Status copy_wait(TransferEngine& e, const Layout& src, std::span<const size_t> s, const Layout& dst,
                 std::span<const size_t> d) {
  auto t = e.copy(src, s, dst, d);
  if (!t) return t.error();
  return t->wait();
}

// A request: its blocks filled from `pattern` (block i of it) and registered on G1; its
// handles dropped when it finishes.
Status run_request(BlockManager& m, const TokenSequence& seq, const Layout& pattern) {
  auto blocks = m.allocate(seq.num_blocks());
  if (!blocks) return blocks.error();
  std::vector<size_t> ids;
  for (MutableBlock& b : *blocks) {
    KVBM_TRY(b.begin_fill());
    ids.push_back(b.block_id());
  }
  KVBM_TRY(copy_wait(m.engine(), pattern, iota_ids(ids.size()), m.layout(Tier::G1), ids));
  for (size_t i = 0; i < blocks->size(); ++i) {
    KVBM_TRY((*blocks)[i].complete(*seq.block(i)));
    auto r = m.register_block((*blocks)[i]);
    if (!r) return r.error();
  }
  return m.flush();
}

// Takes every G1 block once (evicting what is inactive there) and gives them back.
Status pressure_g1(BlockManager& m) {
  auto all = m.allocate(m.pool(Tier::G1).num_blocks());
  if (!all) return all.error();
  return {};
}

struct Reuse {
  size_t hits[kNumTiers] = {0, 0, 0};
  double ms = 0;  // match + onboard
  std::string verified;
};

// B's lookup and onboard; its prefix checked against A's pattern.
Result<Reuse> reuse(BlockManager& m, const TokenSequence& b, Layout& check) {
  Reuse r;
  const auto t0 = std::chrono::steady_clock::now();
  MatchResult match = m.match(b.sequence_hashes());
  r.hits[0] = match.g1.size();
  r.hits[1] = match.g2.size();
  r.hits[2] = match.g3.size();
  auto on = m.onboard(match);
  if (!on) return on.error();
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (on->error) return *on->error;
  std::vector<size_t> ids;
  for (const ImmutableBlock& blk : on->blocks) ids.push_back(blk.block_id());
  KVBM_TRY(copy_wait(m.engine(), m.layout(Tier::G1), ids, check, iota_ids(ids.size())));
  auto v = check_blocks(check, kSeed, [](size_t i) { return i; });
  if (!v) return v.error();
  r.verified = ids.size() == kShared ? *v : "only " + std::to_string(ids.size()) + " blocks";
  return r;
}

struct Act {
  std::unique_ptr<BlockManager> manager;
  std::optional<Layout> pattern, check;  // A's blocks as they should be; B's, read back
  std::optional<TokenSequence> a, b, other;
};

Status set_up(const std::filesystem::path& dir, Act& act) {
  BlockManagerConfig c;
  c.block = block_config(1);
  c.g1_blocks = kG1;
  c.g2_blocks = kG2;
  c.g3_blocks = kG3;
  c.disk_dir = dir;
  c.offload.disk_min_hits = 1;
  auto m = BlockManager::create(c);
  if (!m) return m.error();
  act.manager = std::move(*m);
  auto pattern =
      Layout::allocate(block_config(kG1), LayoutKind::FullyContiguous, SystemAllocator());
  if (!pattern) return pattern.error();
  act.pattern.emplace(std::move(*pattern));
  KVBM_TRY(fill_blocks(*act.pattern, kSeed));
  auto check =
      Layout::allocate(block_config(kShared), LayoutKind::FullyContiguous, SystemAllocator());
  if (!check) return check.error();
  act.check.emplace(std::move(*check));
  // A: 48 blocks; B: A's first 40, then its own; other: unrelated, G2's size.
  act.a.emplace(*TokenSequence::create(16, "demo"));
  act.b.emplace(*TokenSequence::create(16, "demo"));
  act.other.emplace(*TokenSequence::create(16, "demo"));
  for (Token t = 0; t < kA * 16; ++t) act.a->append(t);
  for (Token t = 0; t < kShared * 16 + 40; ++t) act.b->append(t < kShared * 16 ? t : 900000 + t);
  for (Token t = 0; t < kG2 * 16; ++t) act.other->append(500000 + t);
  return {};
}

}  // namespace

bool prefix_reuse_act(const std::filesystem::path& dir, std::ostream& out, Json* rows) {
  out << "\nprefix reuse (block manager): request A fills " << kA << " blocks, B shares its first "
      << kShared << "; tiers G1 " << kG1 << ", G2 " << kG2 << ", G3 " << kG3 << " blocks of "
      << human_bytes(block_bytes()) << "\n";
  Table t({"request", "G1 hit", "G2 hit", "G3 hit", "match+onboard ms", "verified"});
  Act act;
  Status st = set_up(dir, act);
  // A runs, G1 pressure, B finds A's prefix on G2. Then another request fills G1 and G2,
  // and B finds the prefix on G3.
  const char* stage[] = {"B after G1 pressure", "B after G1+G2 pressure"};
  for (int i = 0; i < 2 && st; ++i) {
    BlockManager& m = *act.manager;
    st = run_request(m, i == 0 ? *act.a : *act.other, *act.pattern);
    if (st) st = pressure_g1(m);
    if (!st) break;
    auto r = reuse(m, *act.b, *act.check);
    if (!r) {
      st = r.error();
      break;
    }
    t.add({stage[i], std::to_string(r->hits[0]), std::to_string(r->hits[1]),
           std::to_string(r->hits[2]), fixed(r->ms, 2), r->verified});
    if (rows) {
      rows->push_back({{"request", stage[i]},
                       {"g1_hit", r->hits[0]},
                       {"g2_hit", r->hits[1]},
                       {"g3_hit", r->hits[2]},
                       {"match_onboard_ms", r->ms},
                       {"verified", r->verified}});
    }
    if (r->verified != "ok") st = err(ErrorCode::Internal, "B's blocks: ", r->verified);
    if (st) st = pressure_g1(m);
  }
  t.print(out);
  if (!st) out << "prefix reuse FAILED: " << st.error().to_string() << "\n";
  if (!st && rows) rows->push_back({{"error", st.error().to_string()}});
  return st.ok();
}

}  // namespace kvbm::tools::demo
