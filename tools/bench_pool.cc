// `kvbm bench pool`: the block manager's own costs. match() latency for a long prefix,
// allocate+register throughput, bookkeeping bytes per block, and offload / onboard
// bandwidth next to the TransferEngine's own copy of the same blocks in the same run (the
// ceiling the manager can reach). G1 is GPU memory when a GPU is usable, else host memory;
// every onboarded byte is checked once.
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <numeric>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "common/pattern.h"
#include "kvbm/cuda.h"
#include "kvbm/pool.h"
#include "kvbm/storage.h"
#include "kvbm/version.h"
#include "report.h"
#include "table.h"
#include "timing.h"

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchPoolOptions {
  size_t blocks = 4096;  // per tier, for the bandwidth rows
  size_t block_kib = 256;
  size_t match_blocks = 1000;
  int match_iters = 20000;
  size_t ops = 1'000'000;  // allocate+register operations
  size_t bookkeeping_blocks = 1 << 20;
  int iters = 3;  // bandwidth: timed runs per row (median)
  bool no_gpu = false;
  bool no_disk = false;
  std::string dir;
  bool json = false;  // one JSON document on stdout instead of the tables
};

std::vector<SequenceHash> chain(size_t n, uint64_t salt) {
  std::vector<SequenceHash> h(n);
  SequenceHash parent = 0;
  for (size_t i = 0; i < n; ++i) {
    const Token t[2] = {static_cast<Token>(i), static_cast<Token>(salt)};
    const BlockHash b = block_hash(t, salt);
    h[i] = parent = i == 0 ? b : sequence_hash(parent, b, salt);
  }
  return h;
}

Status fill_register(BlockPool& pool, MutableBlock& b, SequenceHash h,
                     std::optional<SequenceHash> parent, ImmutableBlock* out) {
  KVBM_TRY(b.begin_fill());
  KVBM_TRY(b.complete(SequenceBlock{.block_hash = 0, .sequence_hash = h, .parent_hash = parent}));
  auto r = pool.register_block(b);
  if (!r) return r.error();
  if (out) *out = std::move(*r);
  return {};
}

// match() of a prefix of `n` registered (inactive) blocks: p50 and p99 in microseconds.
Result<std::pair<double, double>> match_latency(const BenchPoolOptions& o) {
  auto pool = BlockPool::create(Tier::G1, o.match_blocks);
  if (!pool) return pool.error();
  const auto hashes = chain(o.match_blocks, 1);
  auto blocks = (*pool)->allocate(o.match_blocks);
  if (!blocks) return blocks.error();
  for (size_t i = 0; i < o.match_blocks; ++i) {
    std::optional<SequenceHash> parent;
    if (i > 0) parent = hashes[i - 1];
    KVBM_TRY(fill_register(**pool, (*blocks)[i], hashes[i], parent, nullptr));
  }
  std::vector<double> us;
  us.reserve(o.match_iters);
  for (int i = 0; i < o.match_iters; ++i) {
    const auto t0 = Clock::now();
    auto m = (*pool)->match(hashes);
    us.push_back(seconds_since(t0) * 1e6);
    if (m.size() != o.match_blocks) {
      return err(ErrorCode::Internal, "match found ", m.size(), " of ", o.match_blocks);
    }
  }
  std::sort(us.begin(), us.end());
  return std::make_pair(us[us.size() / 2], us[us.size() * 99 / 100]);
}

LayoutConfig block_shape(size_t kib);

// The same through BlockManager::match (G1 only matches; a G3 tier, so the disk
// filter counts every hit, with a threshold no block reaches, so nothing is copied).
Result<std::pair<double, double>> manager_match_latency(const BenchPoolOptions& o) {
  BlockManagerConfig c;
  c.block = block_shape(4);
  c.g1_blocks = o.match_blocks;
  c.g3_blocks = o.match_blocks;
  c.disk_dir = o.dir;
  c.use_gpu = false;
  c.offload.disk_min_hits = UINT32_MAX;
  auto m = BlockManager::create(c);
  if (!m) return m.error();
  const auto hashes = chain(o.match_blocks, 1);
  auto blocks = (*m)->allocate(o.match_blocks);
  if (!blocks) return blocks.error();
  for (size_t i = 0; i < o.match_blocks; ++i) {
    MutableBlock& b = (*blocks)[i];
    KVBM_TRY(b.begin_fill());
    std::optional<SequenceHash> parent;
    if (i > 0) parent = hashes[i - 1];
    KVBM_TRY(b.complete({.block_hash = 0, .sequence_hash = hashes[i], .parent_hash = parent}));
    auto r = (*m)->register_block(b);
    if (!r) return r.error();
  }
  std::vector<double> us;
  us.reserve(o.match_iters);
  for (int i = 0; i < o.match_iters; ++i) {
    const auto t0 = Clock::now();
    MatchResult r = (*m)->match(hashes);
    us.push_back(seconds_since(t0) * 1e6);
    if (r.g1.size() != o.match_blocks) {
      return err(ErrorCode::Internal, "match found ", r.g1.size(), " of ", o.match_blocks);
    }
  }
  std::sort(us.begin(), us.end());
  return std::make_pair(us[us.size() / 2], us[us.size() * 99 / 100]);
}

// allocate(1) + fill + register + drop, in a pool a quarter of the operations' size, so
// that most allocations evict: operations per second.
Result<double> register_rate(const BenchPoolOptions& o) {
  auto pool = BlockPool::create(Tier::G1, std::max<size_t>(1, o.ops / 4));
  if (!pool) return pool.error();
  const auto t0 = Clock::now();
  for (size_t i = 0; i < o.ops; ++i) {
    auto b = (*pool)->allocate(1);
    if (!b) return b.error();
    KVBM_TRY(fill_register(**pool, (*b)[0], i * 0x9E3779B97F4A7C15ull + 1, std::nullopt, nullptr));
  }
  return o.ops / seconds_since(t0);
}

// Bookkeeping per block of a pool whose every block is registered and inactive: the
// pool's own estimate, and what the heap grew by.
Result<std::pair<double, double>> bookkeeping(const BenchPoolOptions& o) {
  const size_t n = o.bookkeeping_blocks;
  const struct mallinfo2 before = mallinfo2();
  auto pool = BlockPool::create(Tier::G1, n);
  if (!pool) return pool.error();
  for (size_t i = 0; i < n; ++i) {
    auto b = (*pool)->allocate(1);
    if (!b) return b.error();
    KVBM_TRY(fill_register(**pool, (*b)[0], i * 0x9E3779B97F4A7C15ull + 1, std::nullopt, nullptr));
  }
  const struct mallinfo2 after = mallinfo2();
  const double heap =
      static_cast<double>((after.uordblks + after.hblkhd) - (before.uordblks + before.hblkhd));
  return std::make_pair(double((*pool)->bookkeeping_bytes()) / n, heap / n);
}

LayoutConfig block_shape(size_t kib) {
  return LayoutConfig{.num_blocks = 0,
                      .num_layers = 2,
                      .outer_dim = 2,
                      .page_size = 16,
                      .inner_dim = kib * 1024 / (4 * 16 * 2),
                      .dtype_bytes = 2,
                      .alignment = 4096};
}

// Copies between G1 and a host layout of G1's shape, for filling and checking GPU blocks.
class HostMirror {
 public:
  static Result<HostMirror> create(const Layout& g1) {
    auto l = Layout::allocate(g1.config(), LayoutKind::FullyContiguous, SystemAllocator());
    if (!l) return l.error();
    return HostMirror(std::move(*l));
  }
  unsigned char* block(size_t i) {
    return reinterpret_cast<unsigned char*>(host_.memory_region_unchecked(i, 0, 0).addr);
  }
  // Host blocks 0..ids.size()-1 -> G1 blocks ids (to_g1), or back.
  Status copy(TransferEngine& e, Layout& g1, std::span<const size_t> ids, bool to_g1) {
    std::vector<size_t> mine(ids.size());
    std::iota(mine.begin(), mine.end(), 0);
    auto t = to_g1 ? e.copy(host_, mine, g1, ids) : e.copy(g1, ids, host_, mine);
    if (!t) return t.error();
    return t->wait();
  }

 private:
  explicit HostMirror(Layout l) : host_(std::move(l)) {}
  Layout host_;
};

std::vector<size_t> ids_of(const std::vector<ImmutableBlock>& blocks) {
  std::vector<size_t> ids;
  for (const ImmutableBlock& b : blocks) ids.push_back(b.block_id());
  return ids;
}

// One engine request of the same blocks, timed: the ceiling of a manager row.
Result<double> engine_seconds(TransferEngine& e, const Layout& src, std::span<const size_t> s,
                              const Layout& dst, std::span<const size_t> d) {
  const auto t0 = Clock::now();
  auto t = e.copy(src, s, dst, d);
  if (!t) return t.error();
  KVBM_TRY(t->wait());
  return seconds_since(t0);
}

struct MoveTimes {
  std::vector<double> offload, offload_engine, onboard, onboard_engine;
  std::string check = "ok";
};

// Registers n fresh blocks on G1 and waits for their offload; then empties G1, matches them
// on `to` and onboards them. Each step timed next to the engine's copy of the same blocks.
Status move_round(BlockManager& m, Tier to, HostMirror& mirror, size_t n, uint64_t round,
                  MoveTimes& times) {
  Layout& g1 = m.layout(Tier::G1);
  const size_t bytes = block_bytes(g1.config());
  auto blocks = m.allocate(n);
  if (!blocks) return blocks.error();
  std::vector<size_t> ids;
  for (size_t i = 0; i < n; ++i) {
    ids.push_back((*blocks)[i].block_id());
    detail::fill_pattern(mirror.block(i), bytes, round * n + i);
  }
  KVBM_TRY(mirror.copy(m.engine(), g1, ids, true));
  const auto hashes = chain(n, round + 2);
  auto t0 = Clock::now();
  for (size_t i = 0; i < n; ++i) {
    MutableBlock& b = (*blocks)[i];
    KVBM_TRY(b.begin_fill());
    std::optional<SequenceHash> parent;
    if (i > 0) parent = hashes[i - 1];
    KVBM_TRY(b.complete({.block_hash = 0, .sequence_hash = hashes[i], .parent_hash = parent}));
    auto r = m.register_block(b);
    if (!r) return r.error();
  }
  KVBM_TRY(m.flush(std::chrono::minutes(10)));
  times.offload.push_back(seconds_since(t0));
  auto on_tier = m.pool(to).match(hashes);
  if (on_tier.size() != n) return err(ErrorCode::Internal, "offloaded ", on_tier.size(), " of ", n);
  const auto tier_ids = ids_of(on_tier);
  on_tier.clear();
  auto e = engine_seconds(m.engine(), g1, ids, m.layout(to), tier_ids);
  if (!e) return e.error();
  times.offload_engine.push_back(*e);

  m.pool(Tier::G1).clear_inactive();
  for (Tier t : {Tier::G1, Tier::G2}) {
    if (t != to && m.has_tier(t)) m.pool(t).clear_inactive();
  }
  std::fill(ids.begin(), ids.end(), 0);
  t0 = Clock::now();
  MatchResult match = m.match(hashes);
  auto on = m.onboard(match);
  if (!on) return on.error();
  times.onboard.push_back(seconds_since(t0));
  if (on->error) return *on->error;
  if (on->blocks.size() != n) return err(ErrorCode::Internal, "onboarded ", on->blocks.size());
  const auto g1_ids = ids_of(on->blocks);
  e = engine_seconds(m.engine(), m.layout(to), tier_ids, g1, g1_ids);
  if (!e) return e.error();
  times.onboard_engine.push_back(*e);
  if (round == 0) {
    KVBM_TRY(mirror.copy(m.engine(), g1, g1_ids, false));
    for (size_t i = 0; i < n && times.check == "ok"; ++i) {
      if (detail::find_pattern_mismatch(mirror.block(i), bytes, i) != SIZE_MAX) {
        times.check = "MISMATCH block " + std::to_string(i);
      }
    }
  }
  on->blocks.clear();
  for (size_t t = 0; t < kNumTiers; ++t) {
    if (m.has_tier(static_cast<Tier>(t))) m.pool(static_cast<Tier>(t)).clear_inactive();
  }
  return {};
}

// G1 <-> `to` (G2, or G3 straight from G1): `iters` rounds, medians into the table.
Status move_rows(const BenchPoolOptions& o, bool gpu, Tier to, Table& table, Json& rows) {
  BlockManagerConfig c;
  c.block = block_shape(o.block_kib);
  c.g1_blocks = o.blocks;
  (to == Tier::G2 ? c.g2_blocks : c.g3_blocks) = o.blocks;
  c.disk_dir = o.dir;
  c.use_gpu = gpu;
  c.offload.disk_min_hits = 1;
  c.offload.max_batch = o.blocks;
  c.offload.queue_capacity = 2 * o.blocks;
  auto m = BlockManager::create(c);
  if (!m) return m.error();
  auto mirror = HostMirror::create((*m)->layout(Tier::G1));
  if (!mirror) return mirror.error();
  MoveTimes times;
  for (int r = 0; r < o.iters; ++r) KVBM_TRY(move_round(**m, to, *mirror, o.blocks, r, times));
  const double gb = double(o.blocks) * block_bytes(c.block) / 1e9;
  const std::string g1 = gpu ? "G1 (GPU)" : "G1 (host)";
  const std::string tier = to == Tier::G2 ? (gpu ? "G2 (pinned)" : "G2 (host)") : "G3 (disk)";
  auto row = [&](const std::string& what, const std::vector<double>& mgr,
                 const std::vector<double>& eng, const std::string& check) {
    const double a = gb / median(mgr), b = gb / median(eng);
    table.add({what, std::to_string(o.blocks), fixed(a, 2), fixed(b, 2), fixed(a / b, 2), check});
    rows.push_back({{"move", what},
                    {"blocks", o.blocks},
                    {"manager_gbps", a},
                    {"engine_gbps", b},
                    {"ratio", a / b},
                    {"check", check}});
  };
  row("offload " + g1 + " -> " + tier, times.offload, times.offload_engine, "");
  row("onboard " + tier + " -> " + g1, times.onboard, times.onboard_engine, times.check);
  return {};
}

int run_bench_pool_moves(const BenchPoolOptions& o, bool gpu, Table& table, Json& rows) {
  int rc = 0;
  for (Tier to : {Tier::G2, Tier::G3}) {
    if (to == Tier::G3 && o.no_disk) continue;
    if (auto st = move_rows(o, gpu, to, table, rows); !st) {
      table.add({std::string("G1 <-> ") + to_string(to), std::to_string(o.blocks), "-", "-", "-",
                 "FAILED: " + st.error().to_string()});
      rows.push_back({{"move", std::string("G1 <-> ") + to_string(to)},
                      {"blocks", o.blocks},
                      {"error", st.error().to_string()}});
      rc = 1;
    }
  }
  return rc;
}

int run_bench_pool(const BenchPoolOptions& o) {
  const bool gpu = !o.no_gpu && cuda_device_count().value_or(0) > 0;
  Table costs({"measure", "value", "note"});
  Json cost_rows = Json::array();
  auto cost = [&](const std::string& measure, double value, int decimals, const std::string& unit,
                  const std::string& note) {
    costs.add({measure, fixed(value, decimals) + " " + unit, note});
    cost_rows.push_back({{"measure", measure}, {"value", value}, {"unit", unit}, {"note", note}});
  };
  auto lat = match_latency(o);
  if (!lat) {
    std::cerr << "match latency: " << lat.error().to_string() << "\n";
    return 1;
  }
  const std::string prefix = std::to_string(o.match_blocks) + "-block prefix";
  cost("BlockPool::match() p50", lat->first, 2, "us", prefix);
  cost("BlockPool::match() p99", lat->second, 2, "us", prefix);
  auto mlat = manager_match_latency(o);
  if (!mlat) {
    std::cerr << "manager match latency: " << mlat.error().to_string() << "\n";
    return 1;
  }
  cost("BlockManager::match() p50", mlat->first, 2, "us", prefix + ", on G1");
  cost("BlockManager::match() p99", mlat->second, 2, "us", prefix + ", on G1");
  auto rate = register_rate(o);
  if (!rate) {
    std::cerr << "allocate+register: " << rate.error().to_string() << "\n";
    return 1;
  }
  cost("allocate+register", *rate / 1e6, 2, "M ops/s",
       std::to_string(o.ops) + " ops, most evicting");
  auto bytes = bookkeeping(o);
  if (!bytes) {
    std::cerr << "bookkeeping: " << bytes.error().to_string() << "\n";
    return 1;
  }
  const std::string blocks = std::to_string(o.bookkeeping_blocks) + " registered blocks";
  cost("bookkeeping (pool's count)", bytes->first, 1, "B/block", blocks);
  cost("bookkeeping (heap growth)", bytes->second, 1, "B/block", blocks);
  if (!o.json) {
    costs.print(std::cout);
    std::cout << "\n";
  }

  Table moves({"move", "blocks", "manager GB/s", "engine GB/s", "ratio", "check"});
  Json move_rows = Json::array();
  const int rc = run_bench_pool_moves(o, gpu, moves, move_rows);
  if (!o.json) {
    moves.print(std::cout);
    return rc;
  }
  print_json({{"command", "kvbm bench pool"},
              {"kvbm", version()},
              {"versions", versions_json()},
              {"machine", machine_json()},
              {"options",
               {{"blocks", o.blocks},
                {"block_kib", o.block_kib},
                {"match_blocks", o.match_blocks},
                {"match_iters", o.match_iters},
                {"ops", o.ops},
                {"bookkeeping_blocks", o.bookkeeping_blocks},
                {"iters", o.iters},
                {"gpu", gpu},
                {"disk", !o.no_disk}}},
              {"costs", std::move(cost_rows)},
              {"rows", std::move(move_rows)},
              {"ceiling", "the transfer engine's own copy of the same blocks"},
              {"verdict", rc == 0 ? "ok" : "failed"}});
  return rc;
}

}  // namespace

void add_bench_pool(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<BenchPoolOptions>();
  auto* cmd = bench.add_subcommand(
      "pool", "Block manager: match latency, register rate, bookkeeping, offload/onboard");
  cmd->add_option("--blocks", o->blocks, "Blocks per tier for the bandwidth rows")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 22));
  cmd->add_option("--block-kib", o->block_kib, "KiB per block (a multiple of 4)")
      ->capture_default_str()
      ->check(CLI::Range(4, 1 << 16));
  cmd->add_option("--match-blocks", o->match_blocks, "Prefix length for match()")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 22));
  cmd->add_option("--match-iters", o->match_iters, "Timed match() calls")
      ->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--ops", o->ops, "allocate+register operations")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30));
  cmd->add_option("--bookkeeping-blocks", o->bookkeeping_blocks, "Pool size for bytes/block")
      ->check(CLI::Range(size_t{1}, size_t{1} << 26));
  cmd->add_option("--iters", o->iters, "Bandwidth: timed runs per row (median)")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--no-gpu", o->no_gpu, "G1 in host memory even with a GPU");
  cmd->add_flag("--no-disk", o->no_disk, "Skip the G3 (disk) rows");
  cmd->add_option("--dir", o->dir, "Directory for the G3 file (default: the temp dir)");
  cmd->add_flag("--json", o->json,
                "One JSON document on stdout: machine, versions, options, the costs, every move "
                "row next to the engine's copy, the verdict");
  cmd->callback([o, &runner] { runner = [o] { return run_bench_pool(*o); }; });
}

}  // namespace kvbm::tools
