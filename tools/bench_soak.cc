// kvbm bench soak: requests of random sizes and offsets, WRITE then READ back, on several
// lanes at once between this process and a target process (`kvbm bench xfer-target`),
// for a set time, every byte checked; the target is killed with SIGKILL at random moments
// and started again, and the lanes fetch its metadata anew. It prints bytes moved,
// requests done and failed (each distinct error with its count) and corrupted bytes,
// which must be 0: a request may fail while its peer dies, but never succeed with bytes
// that did not arrive. Exit status 1 if any byte was corrupted. With --json, one JSON
// document on stdout instead of the lines.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "commands.h"
#include "common/pattern.h"
#include "kvbm/storage.h"
#include "kvbm/version.h"
#include "kvbm/xfer/agent.h"
#include "loopback_env.h"
#include "options.h"
#include "report.h"
#include "subprocess.h"
#include "table.h"

namespace kvbm::tools {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct SoakOptions {
  size_t seconds = 60;
  size_t lanes = 8;
  size_t max_bytes = 4 << 20;    // largest request
  size_t lane_bytes = 16 << 20;  // each lane's slice of the target's buffer
  double kill_every_s = 5;       // mean time between kills of the target (0: never)
  std::string transport = "tcp";
  uint64_t seed = 1;
  bool json = false;  // one JSON document on stdout instead of the lines
};

// The target process and what lanes need to address it; replaced on every restart.
struct SoakTarget {
  std::unique_ptr<Subprocess> process;
  uint64_t addr = 0;
  uint16_t port = 0;
  uint64_t generation = 0;
};

struct Totals {
  std::mutex mu;
  std::map<std::string, uint64_t> errors;  // message -> count
  std::atomic<uint64_t> bytes{0}, ok{0}, failed{0}, corrupted{0}, restarts{0};
  void fail(const Error& e) {
    ++failed;
    std::string m = e.to_string();
    // Addresses and numbers differ from one failure to the next: keep the message's shape.
    for (char& c : m) {
      if (c >= '0' && c <= '9') c = '#';
    }
    std::lock_guard<std::mutex> lock(mu);
    ++errors[m];
  }
};

class Soak {
 public:
  explicit Soak(const SoakOptions& o) : o_(o) {}
  int run();

 private:
  Status start_target();
  // The --json document of a finished run.
  Json document();
  // One lane: WRITE a fresh pattern into its slice, READ it back, compare; until the end.
  void lane(size_t index);
  void killer();

  const SoakOptions& o_;
  std::unique_ptr<xfer::Agent> agent_;
  std::mutex target_mu_;  // target_, and (re)loading its metadata
  SoakTarget target_;
  std::atomic<bool> stop_{false};
  Totals totals_;
};

Status Soak::start_target() {
  std::vector<std::string> argv = {"/proc/self/exe",
                                   "bench",
                                   "xfer-target",
                                   "--bytes",
                                   std::to_string(o_.lanes * o_.lane_bytes),
                                   "--progress-thread"};
  Subprocess::Options so;
  so.pipe_stdin = true;
  so.pipe_stdout = true;
  so.quiet_stderr = true;
  auto p = spawn_child(argv, so);
  if (!p) return p.error();
  auto line = p->read_line(30s);
  while (line && line->rfind("READY ", 0) != 0) line = p->read_line(30s);
  if (!line) return line.error();
  std::istringstream in(line->substr(6));
  SoakTarget t;
  in >> t.port >> t.addr;
  t.process = std::make_unique<Subprocess>(std::move(*p));
  auto name = agent_->fetch_remote_metadata("127.0.0.1", t.port);
  if (!name) return name.error();
  t.generation = target_.generation + 1;
  target_ = std::move(t);
  return {};
}

void Soak::lane(size_t index) {
  std::mt19937_64 rng(o_.seed * 1000003 + index);
  auto local = SystemAllocator().allocate(o_.lane_bytes);
  auto back = SystemAllocator().allocate(o_.lane_bytes);
  if (!local || !back) return totals_.fail(!local ? local.error() : back.error());
  auto reg = agent_->register_memory(xfer::DescList(
      xfer::MemType::Dram, {{local->addr(), local->size(), 0}, {back->addr(), back->size(), 0}}));
  if (!reg) return totals_.fail(reg.error());
  while (!stop_.load()) {
    const size_t len = std::uniform_int_distribution<size_t>(1, o_.max_bytes)(rng);
    const size_t off = std::uniform_int_distribution<size_t>(0, o_.lane_bytes - len)(rng);
    const uint64_t seed = rng();
    detail::fill_pattern(static_cast<char*>(local->data()) + off, len, seed);
    std::memset(static_cast<char*>(back->data()) + off, 0, len);
    uint64_t remote, generation;
    {
      std::lock_guard<std::mutex> lock(target_mu_);
      remote = target_.addr + index * o_.lane_bytes + off;
      generation = target_.generation;
    }
    auto one = [&](xfer::Op op, uint64_t at) -> Status {
      auto req = agent_->create_request(op, xfer::DescList(xfer::MemType::Dram, {{at, len, 0}}),
                                        xfer::DescList(xfer::MemType::Dram, {{remote, len, 0}}),
                                        "kvbm-bench-target");
      if (!req) return req.error();
      KVBM_TRY((*req)->post());
      return (*req)->wait(60s);
    };
    Status w = one(xfer::Op::Write, local->addr() + off);
    Status r = w ? one(xfer::Op::Read, back->addr() + off) : w;
    if (!r) {
      totals_.fail(r.error());
      std::this_thread::sleep_for(10ms);  // the target may be restarting
      continue;
    }
    bool restarted;
    {
      std::lock_guard<std::mutex> lock(target_mu_);
      restarted = target_.generation != generation;
    }
    ++totals_.ok;
    totals_.bytes += 2 * len;
    // Both ends succeeded against one target: every byte must have come back.
    if (restarted) continue;  // the READ may have found a new target's memory
    const size_t bad =
        detail::find_pattern_mismatch(static_cast<char*>(back->data()) + off, len, seed, 0);
    if (bad != SIZE_MAX) {
      std::vector<char> want(len);
      detail::fill_pattern(want.data(), len, seed);
      const char* got = static_cast<const char*>(back->data()) + off;
      for (size_t i = bad; i < len; ++i) totals_.corrupted += got[i] != want[i];
    }
  }
}

void Soak::killer() {
  std::mt19937_64 rng(o_.seed);
  std::exponential_distribution<double> gap(1.0 / o_.kill_every_s);
  auto next = Clock::now() +
              std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
  while (!stop_.load()) {
    std::this_thread::sleep_for(20ms);
    if (Clock::now() < next) continue;
    std::lock_guard<std::mutex> lock(target_mu_);
    target_.process->kill_now();
    (void)target_.process->wait(10s);
    (void)agent_->invalidate_remote("kvbm-bench-target");  // NotFound if already dropped
    if (auto st = start_target(); !st) {
      std::cerr << "kvbm bench soak: restarting the target: " << st.error().to_string() << "\n";
      stop_ = true;
      return;
    }
    ++totals_.restarts;
    next = Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
  }
}

Json Soak::document() {
  Json j = {{"command", "kvbm bench soak"},
            {"kvbm", version()},
            {"versions", versions_json()},
            {"machine", machine_json()},
            {"options",
             {{"seconds", o_.seconds},
              {"lanes", o_.lanes},
              {"max_request_bytes", o_.max_bytes},
              {"kill_every_s", o_.kill_every_s},
              {"transport", o_.transport},
              {"seed", o_.seed},
              {"ucx_tls", getenv("UCX_TLS") ? getenv("UCX_TLS") : ""}}},
            {"bytes_moved", totals_.bytes.load()},
            {"requests_ok", totals_.ok.load()},
            {"requests_failed", totals_.failed.load()},
            {"target_restarts", totals_.restarts.load()},
            {"corrupted_bytes", totals_.corrupted.load()},
            {"errors", Json::array()}};
  std::lock_guard<std::mutex> lock(totals_.mu);
  for (const auto& [message, count] : totals_.errors)
    j["errors"].push_back({{"message", message}, {"count", count}});
  j["verdict"] = totals_.corrupted.load() == 0 ? "ok" : "corrupted";
  return j;
}

int Soak::run() {
  use_loopback_env(o_.transport == "shm" ? "sm,self" : "tcp,self");
  xfer::AgentConfig config;
  config.peer_timeout = 3s;
  auto agent = xfer::Agent::create("kvbm-soak", config);
  if (!agent) {
    std::cerr << "kvbm bench soak: " << agent.error().to_string() << "\n";
    return 1;
  }
  agent_ = std::move(*agent);
  {
    std::lock_guard<std::mutex> lock(target_mu_);
    if (auto st = start_target(); !st) {
      std::cerr << "kvbm bench soak: target: " << st.error().to_string() << "\n";
      return 1;
    }
  }
  if (!o_.json)
    std::cout << "kvbm bench soak: " << o_.lanes << " lanes, requests of 1 B.."
              << human_bytes(o_.max_bytes) << " (WRITE then READ back, every byte checked) for "
              << o_.seconds << " s over UCX_TLS=" << getenv("UCX_TLS")
              << "; the target killed every " << o_.kill_every_s << " s on average" << std::endl;
  std::vector<std::thread> lanes;
  for (size_t i = 0; i < o_.lanes; ++i) lanes.emplace_back([this, i] { lane(i); });
  std::thread killing;
  if (o_.kill_every_s > 0) killing = std::thread([this] { killer(); });
  const auto end = Clock::now() + std::chrono::seconds(o_.seconds);
  while (!stop_.load() && Clock::now() < end) std::this_thread::sleep_for(100ms);
  stop_ = true;
  if (killing.joinable()) killing.join();
  for (auto& t : lanes) t.join();

  if (o_.json) {
    print_json(document());
  } else {
    std::cout << "bytes moved        " << totals_.bytes.load() << "\nrequests ok        "
              << totals_.ok.load() << " (pairs)\nrequests failed    " << totals_.failed.load()
              << "\ntarget restarts    " << totals_.restarts.load() << "\ncorrupted bytes    "
              << totals_.corrupted.load() << "\n";
    for (const auto& [message, count] : totals_.errors) {
      std::cout << "  " << count << " x " << message << "\n";
    }
  }
  {
    std::lock_guard<std::mutex> lock(target_mu_);
    target_.process->send("quit");
    target_.process->close_stdin();
    (void)target_.process->wait(10s);
  }
  return totals_.corrupted.load() == 0 ? 0 : 1;
}

}  // namespace

void add_bench_soak(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<SoakOptions>();
  auto* cmd = bench.add_subcommand(
      "soak",
      "Random requests both ways for a set time, every byte checked, the peer killed and "
      "restarted at random: corrupted bytes must be 0");
  cmd->add_option("--seconds", o->seconds, "How long")
      ->capture_default_str()
      ->check(CLI::Range(1, 24 * 3600));
  cmd->add_option("--lanes", o->lanes, "Requests in flight at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  add_size_option(*cmd, "--max-request", o->max_bytes, "Largest request", 1, size_t{64} << 20);
  cmd->add_option("--kill-every", o->kill_every_s,
                  "Mean seconds between kills of the target (0: never)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  cmd->add_option("--transport", o->transport, "tcp (loopback) or shm")
      ->capture_default_str()
      ->check(CLI::IsMember({"tcp", "shm"}));
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_flag("--json", o->json,
                "One JSON document on stdout: machine, versions, options, the totals, each "
                "distinct error with its count, the verdict");
  cmd->callback([o, &runner] {
    runner = [o] {
      o->lane_bytes = std::max(o->lane_bytes, o->max_bytes);
      return Soak(*o).run();
    };
  });
}

}  // namespace kvbm::tools
