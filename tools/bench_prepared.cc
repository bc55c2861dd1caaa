// `kvbm bench prepared`: what prepared descriptor lists save. Two agents in this process
// over UCX, each with its buffer registered as many regions; the same blocks moved by
// create_request over descriptor lists (every request looks its regions up and checks
// them) and over prepared lists (requests by index). Rows: the cost of making a request
// of N descriptors, and the latency of an 8-byte READ and WRITE made, posted and waited
// for, next to posting a request made once. Every path's bytes are checked once.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "common/pattern.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "options.h"
#include "report.h"
#include "table.h"
#include "timing.h"

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;
using xfer::DescList;
using xfer::MemType;
using xfer::Op;

struct PreparedOptions {
  std::vector<size_t> descs = {1, 64, 1024};  // descriptors per request, one row each
  size_t regions = 64;                        // regions each side registers
  size_t block = 4096;                        // bytes per descriptor
  size_t iters = 0;                           // requests made per row and path (0: by size)
  size_t lat_iters = 20000;                   // round trips per latency row and way
  bool json = false;                          // one JSON document on stdout (tables: stderr)
};

// Two agents: "a" initiates (polling, as the latency benches do), "b" is its peer.
struct Pair {
  std::unique_ptr<xfer::Agent> a, b;
  std::optional<SystemStorage> abuf, bbuf;
  std::vector<std::unique_ptr<xfer::MemoryRegistration>> regs;
  DescList all_a{MemType::Dram}, all_b{MemType::Dram};  // every block, in order
  std::shared_ptr<const xfer::PreparedDescs> local, remote;
};

Result<SystemStorage> buffer(size_t bytes, uint64_t seed) {
  auto s = SystemAllocator(SystemMemory::Shareable).allocate(bytes);
  if (!s) return s.error();
  detail::fill_pattern(s->data(), bytes, seed);
  return std::move(*s);
}

Status register_regions(Pair& p, xfer::Agent& agent, const SystemStorage& s, size_t regions) {
  const size_t size = s.size() / regions;
  for (size_t r = 0; r < regions; ++r) {
    auto reg = agent.register_memory(DescList(MemType::Dram, {{s.addr() + r * size, size, 0}}));
    if (!reg) return reg.error();
    p.regs.push_back(std::move(*reg));
  }
  return {};
}

Result<Pair> make_pair(const PreparedOptions& o, size_t blocks) {
  Pair p;
  xfer::AgentConfig ca, cb;
  ca.progress_thread = false;
  ca.add_cuda_if_gpu = cb.add_cuda_if_gpu = false;
  ca.backends = cb.backends = {"UCX"};
  auto a = xfer::Agent::create("bench-a", ca);
  if (!a) return a.error();
  auto b = xfer::Agent::create("bench-b", cb);
  if (!b) return b.error();
  p.a = std::move(*a);
  p.b = std::move(*b);
  auto abuf = buffer(blocks * o.block, 1);
  if (!abuf) return abuf.error();
  auto bbuf = buffer(blocks * o.block, 2);
  if (!bbuf) return bbuf.error();
  p.abuf = std::move(*abuf);
  p.bbuf = std::move(*bbuf);
  KVBM_TRY(register_regions(p, *p.a, *p.abuf, o.regions));
  KVBM_TRY(register_regions(p, *p.b, *p.bbuf, o.regions));
  auto md = p.b->local_metadata();
  if (!md) return md.error();
  auto peer = p.a->load_remote_metadata(*md);
  if (!peer) return peer.error();
  for (size_t i = 0; i < blocks; ++i) {
    p.all_a.add(p.abuf->addr() + i * o.block, o.block);
    p.all_b.add(p.bbuf->addr() + i * o.block, o.block);
  }
  auto local = p.a->prepare_descs(p.all_a, p.a->name());
  if (!local) return local.error();
  auto remote = p.a->prepare_descs(p.all_b, p.b->name());
  if (!remote) return remote.error();
  p.local = std::move(*local);
  p.remote = std::move(*remote);
  return p;
}

// One request's blocks: n of them spread over the whole buffer (so over many regions),
// as indices and as the descriptor lists that name the same blocks.
struct Shape {
  std::vector<uint32_t> indices;
  DescList local{MemType::Dram}, remote{MemType::Dram};
};

Shape shape(const Pair& p, size_t n, size_t len) {
  Shape s;
  const size_t blocks = p.all_a.size(), stride = std::max<size_t>(1, blocks / n);
  for (size_t i = 0; i < n; ++i) {
    const auto index = static_cast<uint32_t>((i * stride) % blocks);
    s.indices.push_back(index);
    s.local.add(p.all_a.descs[index].addr, len);
    s.remote.add(p.all_b.descs[index].addr, len);
  }
  return s;
}

Result<std::unique_ptr<xfer::Request>> make(Pair& p, bool prepared, Op op, const Shape& s) {
  if (prepared) return p.a->create_request(op, *p.local, s.indices, *p.remote, s.indices);
  return p.a->create_request(op, s.local, s.remote, p.b->name());
}

Status post_wait(xfer::Request& r) {
  KVBM_TRY(r.post());
  return r.wait(std::chrono::seconds(10));
}

// Both paths move exactly the blocks they name: WRITE a's blocks to b, READ them back.
Status verify(Pair& p, const Shape& s, size_t len) {
  for (bool prepared : {false, true}) {
    const uint64_t seed = prepared ? 11 : 10;
    for (uint32_t i : s.indices) {
      detail::fill_pattern(reinterpret_cast<void*>(p.all_a.descs[i].addr), len, seed + i);
    }
    for (Op op : {Op::Write, Op::Read}) {
      if (op == Op::Read) {  // pull back over a's blocks, wiped first
        for (uint32_t i : s.indices)
          std::fill_n(reinterpret_cast<char*>(p.all_a.descs[i].addr), len, 0);
      }
      auto r = make(p, prepared, op, s);
      if (!r) return r.error();
      KVBM_TRY(post_wait(**r));
    }
    for (uint32_t i : s.indices) {
      for (const auto* d : {&p.all_a.descs[i], &p.all_b.descs[i]}) {
        if (detail::find_pattern_mismatch(reinterpret_cast<void*>(d->addr), len, seed + i) !=
            SIZE_MAX) {
          return err(ErrorCode::Internal, prepared ? "prepared" : "DescList",
                     " request moved wrong bytes in block ", i);
        }
      }
    }
  }
  return {};
}

// Microseconds to make one request of `s` (not posted) by descriptor lists and by prepared
// lists: batches of the two alternate, so that both meet the machine in the same state, and
// each path's median batch counts. Destroying the requests is left out of the time.
Result<std::pair<double, double>> make_us(Pair& p, const Shape& s, size_t iters) {
  constexpr size_t kBatch = 32;
  const size_t batches = std::max<size_t>(9, (iters + kBatch - 1) / kBatch);
  std::vector<double> us[2];
  std::vector<std::unique_ptr<xfer::Request>> batch;
  batch.reserve(kBatch);
  for (size_t round = 0; round < batches; ++round) {
    for (int prepared = 0; prepared < 2; ++prepared) {
      const auto t0 = Clock::now();
      for (size_t i = 0; i < kBatch; ++i) {
        auto r = make(p, prepared == 1, Op::Read, s);
        if (!r) return r.error();
        batch.push_back(std::move(*r));
      }
      us[prepared].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
                             kBatch);
      batch.clear();
    }
  }
  return std::make_pair(median(us[0]), median(us[1]));
}

struct Lat {
  double p50 = 0, mean = 0;
};

// Round trips of one request of `s` three ways, interleaved: [0] made once and posted
// again; made anew each time (and destroyed) over [1] descriptor lists, [2] prepared lists.
Result<std::array<Lat, 3>> latency(Pair& p, Op op, const Shape& s, size_t iters) {
  auto reused = make(p, false, op, s);
  if (!reused) return reused.error();
  std::vector<double> us[3];
  for (size_t i = 0; i < iters; ++i) {
    for (int mode = 0; mode < 3; ++mode) {
      const auto t0 = Clock::now();
      if (mode == 0) {
        KVBM_TRY(post_wait(**reused));
      } else {
        auto r = make(p, mode == 2, op, s);
        if (!r) return r.error();
        KVBM_TRY(post_wait(**r));
      }
      us[mode].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  }
  std::array<Lat, 3> out;
  for (int mode = 0; mode < 3; ++mode) {
    out[mode].mean =
        std::accumulate(us[mode].begin(), us[mode].end(), 0.0) / static_cast<double>(iters);
    out[mode].p50 = median(std::move(us[mode]));
  }
  return out;
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

// The cost of making a request, per descriptor count: a table row and a JSON row each.
Status made_rows(Pair& p, const PreparedOptions& o, Table& made, Json& rows) {
  for (size_t n : o.descs) {
    const Shape s = shape(p, n, o.block);
    KVBM_TRY(verify(p, s, o.block));
    const size_t iters = o.iters != 0 ? o.iters : std::clamp<size_t>(200000 / n, 200, 20000);
    auto us = make_us(p, s, iters);
    if (!us) return us.error();
    const auto [by_list, by_index] = *us;
    made.add({std::to_string(n), fixed(by_list, 3), fixed(by_index, 3),
              fixed(by_list - by_index, 3), fixed(by_index / by_list, 2)});
    rows.push_back({{"descs", n},
                    {"desclist_us", by_list},
                    {"prepared_us", by_index},
                    {"ratio", by_index / by_list}});
  }
  return {};
}

// 8 B round trips both ways: a table row and a JSON row each.
Status latency_rows(Pair& p, const PreparedOptions& o, Table& lat, Json& rows) {
  const Shape tiny = shape(p, 1, 8);
  KVBM_TRY(verify(p, tiny, 8));
  for (Op op : {Op::Read, Op::Write}) {
    auto r = latency(p, op, tiny, o.lat_iters);
    if (!r) return r.error();
    const auto& l = *r;
    lat.add({xfer::to_string(op), "8 B", fixed(l[0].p50, 3), fixed(l[1].p50, 3), fixed(l[2].p50, 3),
             fixed(l[1].p50 - l[2].p50, 3), fixed(l[1].mean, 3), fixed(l[2].mean, 3)});
    rows.push_back({{"op", xfer::to_string(op)},
                    {"bytes", 8},
                    {"reused_p50_us", l[0].p50},
                    {"desclist_p50_us", l[1].p50},
                    {"prepared_p50_us", l[2].p50}});
  }
  return {};
}

int run_prepared(const PreparedOptions& o) {
  const size_t blocks = std::max(*std::max_element(o.descs.begin(), o.descs.end()), o.regions);
  if (blocks % o.regions != 0) {
    return fail("bench prepared", err(ErrorCode::InvalidArgument, "--regions ", o.regions,
                                      " must divide ", blocks, " blocks (the largest --descs)"));
  }
  auto pair = make_pair(o, blocks);
  if (!pair) return fail("bench prepared", pair.error());
  Pair& p = *pair;
  std::ostream& out = o.json ? std::cerr : std::cout;  // with --json, stdout is the document
  out << "kvbm bench prepared: agents 'bench-a' (polling) and 'bench-b' in one process over "
         "UCX (UCX_TLS="
      << env_or("UCX_TLS", "(auto)")
      << ", KVBM_UCX_SAME_HOST=" << env_or("KVBM_UCX_SAME_HOST", "(auto)") << "), " << o.regions
      << " regions of " << human_bytes(blocks / o.regions * o.block) << " each side, "
      << human_bytes(o.block) << " per descriptor, data verified\n\n";

  Table made({"descs", "DescList us", "prepared us", "saved us", "prepared / DescList"});
  Json made_json = Json::array();
  if (auto st = made_rows(p, o, made, made_json); !st) return fail("bench prepared", st.error());
  out << "making a request (create_request, not posted): median of alternating batches\n";
  made.print(out);

  Table lat({"op", "size", "reused p50 us", "DescList p50 us", "prepared p50 us", "saved p50 us",
             "DescList mean us", "prepared mean us"});
  Json lat_json = Json::array();
  if (auto st = latency_rows(p, o, lat, lat_json); !st) return fail("bench prepared", st.error());
  out << "\nlatency: make + post + wait (+ destroy) per round trip; reused: post + wait of "
         "one request made once; "
      << o.lat_iters << " round trips each, the three interleaved\n";
  lat.print(out);
  if (o.json) {
    print_json({{"command", "kvbm bench prepared"},
                {"versions", versions_json()},
                {"machine", machine_json()},
                {"regions", o.regions},
                {"block_bytes", o.block},
                {"make", made_json},
                {"latency", lat_json},
                {"verdict", "ok"}});
  }
  return 0;
}

}  // namespace

void add_bench_prepared(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<PreparedOptions>();
  auto* cmd = bench.add_subcommand(
      "prepared",
      "Requests over prepared descriptor lists (by index) against descriptor lists: the cost "
      "of making one, and 8 B latency");
  add_count_list_option(*cmd, "--descs", o->descs, "Descriptors per request, comma-separated", 1,
                        size_t{1} << 16);
  cmd->add_option("--regions", o->regions, "Regions each agent registers")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 16));
  add_size_option(*cmd, "--block", o->block, "Bytes per descriptor", 8, size_t{1} << 20);
  cmd->add_option("--iters", o->iters, "Requests made per row and path (0: by descriptor count)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{10000000}));
  cmd->add_option("--lat-iters", o->lat_iters, "Round trips per latency row")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{10000000}));
  cmd->add_flag("--json", o->json,
                "One JSON object on stdout: options, machine, versions, every row (tables go to "
                "stderr)");
  cmd->callback([o, &runner] { runner = [o] { return run_prepared(*o); }; });
}

}  // namespace kvbm::tools
