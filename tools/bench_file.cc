// `kvbm bench file`: DRAM <-> FILE through the agent's POSIX backend and, with --vram,
// VRAM <-> FILE through its GDS backend, next to the machine's own ceilings measured in
// the same run: raw UringBatch on a plain O_DIRECT file (plain buffers, and fixed buffers;
// the ratios use the faster), and dd oflag/iflag=direct.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cleanup.h"
#include "commands.h"
#include "common/pattern.h"
#include "common/uring_batch.h"
#include "kvbm/log.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/version.h"
#include "kvbm/xfer/agent.h"
#include "options.h"
#include "report.h"
#include "subprocess.h"
#include "table.h"
#include "timing.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

using namespace kvbm::xfer;
using Clock = std::chrono::steady_clock;
using Times = std::pair<double, double>;  // {write s, read s}

struct FileOptions {
  size_t mib = 1024;
  size_t req_kib = 1024;
  size_t qd = 32;
  std::string dir;            // empty: the temp dir
  std::string vram_mode;      // empty: no VRAM rows; else the GDS backend's mode
  size_t cufile_threads = 0;  // 0: the GDS backend's default
  std::string fixed_buffers;  // empty: the POSIX backend's default
  size_t rounds = 2;          // each path's best of this many, the paths interleaved
  bool json = false;          // one JSON object on stdout instead of the table
  double check = 0;           // > 0: exit 1 when the agent reaches less of the best raw
};

// What every path moves: `n` requests of `req` bytes, from and into `slots` buffers.
struct Shape {
  uint64_t req = 0, total = 0, n = 0, slots = 0;
  unsigned qd = 0;
};

// Posts `reqs` keeping `qd` in flight; returns seconds.
Result<double> run_requests(std::vector<std::unique_ptr<Request>>& reqs, unsigned qd) {
  const auto t0 = Clock::now();
  std::deque<Request*> inflight;
  for (auto& r : reqs) {
    if (inflight.size() == qd) {
      KVBM_TRY(inflight.front()->wait(std::chrono::seconds(60)));
      inflight.pop_front();
    }
    KVBM_TRY(r->post());
    inflight.push_back(r.get());
  }
  for (Request* r : inflight) KVBM_TRY(r->wait(std::chrono::seconds(60)));
  return seconds_since(t0);
}

// Writes the whole file from the buffers at `base` (memory type `mem`) and reads it back
// into the buffers at `back`.
Result<Times> agent_round_trip(Agent& a, DiskStorage& disk, MemType mem, uint64_t base,
                               uint64_t back, const Shape& s) {
  std::vector<std::unique_ptr<Request>> writes, reads;
  for (uint64_t i = 0; i < s.n; ++i) {
    DescList f(MemType::File, {{i * s.req, s.req, static_cast<uint64_t>(disk.fd())}});
    // Device id 0 both ways: host memory, or GPU 0.
    const uint64_t slot = (i % s.slots) * s.req;
    auto w = a.create_request(Op::Write, DescList(mem, {{base + slot, s.req, 0}}), f, a.name());
    if (!w) return w.error();
    auto r = a.create_request(Op::Read, DescList(mem, {{back + slot, s.req, 0}}), f, a.name());
    if (!r) return r.error();
    writes.push_back(std::move(*w));
    reads.push_back(std::move(*r));
  }
  auto w = run_requests(writes, s.qd);
  if (!w) return w.error();
  auto r = run_requests(reads, s.qd);
  if (!r) return r.error();
  return Times{*w, *r};
}

Status check_slots(const char* data, const Shape& s, const char* what) {
  for (uint64_t i = 0; i < s.slots; ++i) {
    if (detail::find_pattern_mismatch(data + i * s.req, s.req, i) != SIZE_MAX)
      return err(ErrorCode::Internal, what, " verification failed in slot ", i);
  }
  return {};
}

// DRAM <-> FILE through the agent, every byte read back checked (untimed).
struct HostPath {
  DiskStorage disk;
  SystemStorage src, dst;
  Result<Times> once(Agent& a, const Shape& s) {
    std::memset(dst.data(), 0, s.slots * s.req);
    auto t = agent_round_trip(a, disk, MemType::Dram, src.addr(), dst.addr(), s);
    if (t) KVBM_TRY(check_slots(static_cast<const char*>(dst.data()), s, "DRAM"));
    return t;
  }
};

Result<HostPath> host_path(Agent& a, const FileOptions& o, const std::filesystem::path& dir,
                           const Shape& s) {
  BackendParams posix{{"queue_depth", std::to_string(o.qd)}};
  if (!o.fixed_buffers.empty()) posix["fixed_buffers"] = o.fixed_buffers;
  KVBM_TRY(a.create_backend("POSIX", posix));
  auto disk = DiskStorage::allocate(s.total, dir);
  if (!disk) return disk.error();
  if (!disk->direct_io()) std::cerr << "note: " << dir.string() << " does not support O_DIRECT\n";
  auto src = SystemAllocator().allocate(s.slots * s.req);
  if (!src) return src.error();
  auto dst = SystemAllocator().allocate(s.slots * s.req);
  if (!dst) return dst.error();
  for (uint64_t i = 0; i < s.slots; ++i)
    detail::fill_pattern(static_cast<char*>(src->data()) + i * s.req, s.req, i);
  KVBM_TRY(register_with_agent(*disk, a));  // unlinks the file: nothing left behind
  KVBM_TRY(register_with_agent(*src, a));
  KVBM_TRY(register_with_agent(*dst, a));
  return HostPath{std::move(*disk), std::move(*src), std::move(*dst)};
}

// VRAM <-> FILE through the GDS backend (cuFile, or its pinned bounce path); the buffers
// start as copies of the host path's.
Result<std::function<Result<Times>()>> vram_path(Agent& a, const FileOptions& o,
                                                 const std::filesystem::path& dir, const Shape& s,
                                                 const SystemStorage& pattern) {
#if KVBM_HAVE_CUDA
  set_log_level(LogLevel::Info);  // the GDS backend says which path each file takes
  BackendParams gds{{"mode", o.vram_mode}};
  if (o.cufile_threads != 0) gds["cufile_threads"] = std::to_string(o.cufile_threads);
  KVBM_TRY(a.create_backend("GDS", gds));
  auto disk = DiskStorage::allocate(s.total, dir);
  if (!disk) return disk.error();
  auto src = DeviceAllocator(0).allocate(s.slots * s.req);
  if (!src) return src.error();
  auto dst = DeviceAllocator(0).allocate(s.slots * s.req);
  if (!dst) return dst.error();
  auto vdisk = std::make_shared<DiskStorage>(std::move(*disk));
  auto vsrc = std::make_shared<DeviceStorage>(std::move(*src));
  auto vdst = std::make_shared<DeviceStorage>(std::move(*dst));
  if (cudaMemcpy(vsrc->data(), pattern.data(), s.slots * s.req, cudaMemcpyHostToDevice) !=
      cudaSuccess)
    return err(ErrorCode::Internal, "VRAM bench: cudaMemcpy");
  KVBM_TRY(register_with_agent(*vdisk, a));
  KVBM_TRY(register_with_agent(*vsrc, a));
  KVBM_TRY(register_with_agent(*vdst, a));
  return std::function<Result<Times>()>([&a, vdisk, vsrc, vdst, s]() -> Result<Times> {
    if (cudaMemset(vdst->data(), 0, s.slots * s.req) != cudaSuccess)
      return err(ErrorCode::Internal, "VRAM bench: cudaMemset");
    auto t = agent_round_trip(a, *vdisk, MemType::Vram, vsrc->addr(), vdst->addr(), s);
    if (!t) return t;
    std::vector<char> check(s.slots * s.req);
    if (cudaMemcpy(check.data(), vdst->data(), check.size(), cudaMemcpyDeviceToHost) != cudaSuccess)
      return err(ErrorCode::Internal, "VRAM bench: cudaMemcpy back");
    KVBM_TRY(check_slots(check.data(), s, "VRAM"));
    return t;
  });
#else
  (void)a, (void)o, (void)dir, (void)s, (void)pattern;
  return err(ErrorCode::DeviceUnavailable, "--vram: kvbm was built without CUDA");
#endif
}

// The ceiling: raw UringBatch on a plain O_DIRECT file, same request size and depth, from
// plain buffers or fixed ones (a fresh ring each time, so plain stays plain).
struct RawFile {
  ScratchFile file;  // removed on exit and on SIGINT/SIGTERM: dd needs its path
  int fd = -1;
  std::vector<detail::FileOp> wops, rops;
  ~RawFile() {
    if (fd >= 0) ::close(fd);
  }
  Result<Times> once(bool fixed, HostPath& h, const Shape& s) {
    auto batch = detail::UringBatch::create(s.qd);
    if (!batch) return batch.error();
    if (fixed && !((*batch)->add_fixed(h.src.data(), s.slots * s.req) &&
                   (*batch)->add_fixed(h.dst.data(), s.slots * s.req))) {
      return err(ErrorCode::Io, "the kernel refused fixed buffers (see the log)");
    }
    auto t0 = Clock::now();
    KVBM_TRY((*batch)->run(wops));
    const double w = seconds_since(t0);
    t0 = Clock::now();
    KVBM_TRY((*batch)->run(rops));
    return Times{w, seconds_since(t0)};
  }
};

Status open_raw(RawFile& raw, const std::filesystem::path& dir, HostPath& h, const Shape& s) {
  // Named per process: two runs in one folder must not share it.
  raw.file = ScratchFile(dir / ("kvbm-file-bench-raw-" + std::to_string(::getpid())));
  raw.fd = ::open(raw.file.path().c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (raw.fd < 0)
    return err(ErrorCode::Io, "open ", raw.file.path().string(), ": ", std::strerror(errno));
  if (::fallocate(raw.fd, 0, 0, static_cast<off_t>(s.total)) != 0)
    return err(ErrorCode::Io, "fallocate ", raw.file.path().string(), ": ", std::strerror(errno));
  for (uint64_t i = 0; i < s.n; ++i) {
    const uint64_t slot = (i % s.slots) * s.req;
    raw.wops.push_back({detail::FileOp::Kind::Write, raw.fd, i * s.req,
                        static_cast<char*>(h.src.data()) + slot, s.req});
    raw.rops.push_back({detail::FileOp::Kind::Read, raw.fd, i * s.req,
                        static_cast<char*>(h.dst.data()) + slot, s.req});
  }
  return {};
}

// dd with `args` (and status=none), a child that dies with us; its time in seconds.
Result<double> run_dd(std::vector<std::string> args) {
  const auto t0 = Clock::now();
  args.insert(args.begin(), "dd");
  args.push_back("status=none");
  auto dd = spawn_child(args, {});
  if (!dd) return dd.error();
  auto status = dd->wait(std::chrono::hours(1));
  if (!status) return status.error();
  if (*status != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += (cmd.empty() ? "" : " ") + a;
    return err(ErrorCode::Io, "failed: ", cmd);
  }
  return seconds_since(t0);
}

// Best-of times per path; 1e30 until measured.
struct Best {
  double w = 1e30, r = 1e30;
  void keep(const Times& t) {
    w = std::min(w, t.first);
    r = std::min(r, t.second);
  }
};

// Every path's best times, 1e30 where not measured.
struct Timings {
  Best agent, vram, plain, fixed, dd;
};

Result<Timings> run(const FileOptions& o, const std::filesystem::path& dir, const Shape& s) {
  AgentConfig cfg;
  cfg.backends = {};
  auto agent = Agent::create("bench", cfg);
  if (!agent) return agent.error();
  Agent& a = **agent;
  auto host = host_path(a, o, dir, s);
  if (!host) return host.error();
  std::function<Result<Times>()> vram_once;
  if (!o.vram_mode.empty()) {
    auto v = vram_path(a, o, dir, s, host->src);
    if (!v) return v.error();
    vram_once = std::move(*v);
  }
  RawFile raw;
  KVBM_TRY(open_raw(raw, dir, *host, s));
  // Each path's best of o.rounds, the paths taking turns: a shared disk's speed drifts
  // between seconds, and a path timed only first or only last would carry that drift.
  Timings t;
  for (size_t round = 0; round < o.rounds; ++round) {
    auto h = host->once(a, s);
    if (!h) return h.error();
    t.agent.keep(*h);
    if (vram_once) {
      auto v = vram_once();
      if (!v) return v.error();
      t.vram.keep(*v);
    }
    for (bool fixed_buffers : {false, true}) {
      auto r = raw.once(fixed_buffers, *host, s);
      if (!r) return r.error();
      (fixed_buffers ? t.fixed : t.plain).keep(*r);
    }
    // The rows are bests over every round, so they print at the end; a terminal sees the
    // rounds go by.
    progress("kvbm bench file: round " + std::to_string(round + 1) + " of " +
             std::to_string(o.rounds) + " done");
  }
  // dd with direct I/O, 1 MiB blocks, over the raw file.
  const std::string path = raw.file.path().string(), count = std::to_string(s.total >> 20);
  auto dd_w = run_dd(
      {"if=/dev/zero", "of=" + path, "bs=1M", "count=" + count, "oflag=direct", "conv=notrunc"});
  if (!dd_w) return dd_w.error();
  auto dd_r = run_dd({"if=" + path, "of=/dev/null", "bs=1M", "count=" + count, "iflag=direct"});
  if (!dd_r) return dd_r.error();
  t.dd.keep({*dd_w, *dd_r});
  return t;
}

// The table, or with --json one JSON object; the exit status (--check: 1 when the agent's
// POSIX path reaches less than that share of the best raw io_uring, either way).
int report(const FileOptions& o, const std::filesystem::path& dir, const Shape& s,
           const Timings& t) {
  auto gbps = [&](double secs) { return static_cast<double>(s.total) / secs / 1e9; };
  const Best raw{std::min(t.plain.w, t.fixed.w), std::min(t.plain.r, t.fixed.r)};
  struct Row {
    std::string path;
    const Best* times;
  };
  std::vector<Row> rows = {{"agent POSIX (DRAM<->FILE)", &t.agent}};
  if (!o.vram_mode.empty())
    rows.push_back({"agent GDS (VRAM<->FILE), mode " + o.vram_mode, &t.vram});
  rows.insert(rows.end(), {{"raw io_uring O_DIRECT", &t.plain},
                           {"raw, fixed buffers", &t.fixed},
                           {"dd bs=1M direct", &t.dd}});
  const double ratio_w = raw.w / t.agent.w, ratio_r = raw.r / t.agent.r;
  const bool missed = o.check > 0 && (ratio_w < o.check || ratio_r < o.check);
  if (o.json) {
    nlohmann::ordered_json j = {{"command", "kvbm bench file"},
                                {"kvbm", version()},
                                {"machine", {{"cpu_cores", sysconf(_SC_NPROCESSORS_ONLN)}}},
                                {"options",
                                 {{"mib", o.mib},
                                  {"req_kib", o.req_kib},
                                  {"qd", o.qd},
                                  {"dir", dir.string()},
                                  {"rounds", o.rounds},
                                  {"vram", o.vram_mode}}},
                                {"rows", nlohmann::ordered_json::array()},
                                {"ceiling", "best raw io_uring O_DIRECT (plain or fixed buffers)"},
                                {"agent_vs_ceiling", {{"write", ratio_w}, {"read", ratio_r}}},
                                {"check", o.check},
                                {"verdict", missed ? "missed" : "ok"}};
    for (const Row& r : rows) {
      j["rows"].push_back(
          {{"path", r.path}, {"write_gbps", gbps(r.times->w)}, {"read_gbps", gbps(r.times->r)}});
    }
    std::cout << j.dump(2) << "\n";
  } else {
    auto pct = [](double ratio) { return fixed(100 * ratio, 0) + "%"; };
    Table table({"path", "write GB/s", "read GB/s"});
    for (const Row& r : rows)
      table.add({r.path, fixed(gbps(r.times->w), 2), fixed(gbps(r.times->r), 2)});
    table.add({"agent / best raw", pct(ratio_w), pct(ratio_r)});
    if (!o.vram_mode.empty())
      table.add({"GDS VRAM / best raw", pct(raw.w / t.vram.w), pct(raw.r / t.vram.r)});
    table.add({"agent / dd", pct(t.dd.w / t.agent.w), pct(t.dd.r / t.agent.r)});
    table.print(std::cout);
  }
  if (missed) {
    std::cerr << "kvbm bench file: the agent reached " << fixed(ratio_w, 2) << " / "
              << fixed(ratio_r, 2) << " of the best raw io_uring (write / read), below --check "
              << fixed(o.check, 2) << "\n";
  }
  return missed ? 1 : 0;
}

int run_bench_file(const FileOptions& o) {
  Shape s;
  s.req = uint64_t{o.req_kib} << 10;
  s.total = uint64_t{o.mib} << 20;
  s.n = s.total / s.req;
  s.qd = static_cast<unsigned>(o.qd);
  if (s.n == 0 || s.total % s.req != 0) {
    std::cerr << "kvbm bench file: --mib " << o.mib << " is not a whole number of --req-kib "
              << o.req_kib << " requests\n";
    return kUsageError;
  }
  s.slots = std::min<uint64_t>(s.n, 64);  // a DRAM ring reused across the file
  const std::filesystem::path dir =
      o.dir.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(o.dir);
  if (!o.json) {
    std::cout << "kvbm bench file: " << o.mib << " MiB in " << o.req_kib
              << " KiB requests, queue depth " << o.qd << ", dir " << dir.string() << ", best of "
              << o.rounds << std::endl;
  }
  auto t = run(o, dir, s);
  if (!t) {
    std::cerr << "kvbm bench file: " << t.error().to_string() << "\n";
    return 1;
  }
  return report(o, dir, s, *t);
}

}  // namespace

void add_bench_file(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<FileOptions>();
  auto* cmd = bench.add_subcommand(
      "file",
      "DRAM (and with --vram, VRAM) <-> FILE through the agent, against raw io_uring "
      "O_DIRECT and dd");
  add_size_option(*cmd, "--mib", o->mib, "File size in MiB", 1, size_t{1} << 20, size_t{1} << 20);
  add_size_option(*cmd, "--req-kib", o->req_kib, "Request size in KiB (a multiple of 4 KiB)", 4,
                  size_t{1} << 16, size_t{1} << 10);
  cmd->add_option("--qd", o->qd, "Requests in flight")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{4096}));
  cmd->add_option("--dir", o->dir, "Where the files go (default: the temp dir)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--vram", o->vram_mode, "Also VRAM <-> FILE through the GDS backend in this mode")
      ->check(CLI::IsMember({"auto", "cufile", "bounce"}));
  cmd->add_option("--cufile-threads", o->cufile_threads,
                  "The GDS backend's cufile_threads (default: its own)")
      ->check(CLI::Range(size_t{1}, size_t{64}));
  cmd->add_option("--fixed-buffers", o->fixed_buffers,
                  "The POSIX backend's fixed_buffers (default: its own)")
      ->check(CLI::IsMember({"0", "1"}));
  cmd->add_option("--rounds", o->rounds, "Each figure the best of this many, paths interleaved")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{20}));
  cmd->add_flag("--json", o->json,
                "One JSON object on stdout: options, every row, the ratios, the verdict");
  cmd->add_option("--check", o->check,
                  "Exit 1 when the agent's POSIX path reaches less than this share of the best "
                  "raw io_uring, write or read (e.g. 0.8)")
      ->check(CLI::Range(0.0, 10.0));
  cmd->callback([o, &runner] {
    runner = [o] {
      if (o->req_kib % 4 != 0) {
        std::cerr << "kvbm bench file: --req-kib " << o->req_kib
                  << " is not a multiple of 4 KiB (O_DIRECT)\n";
        return kUsageError;
      }
      return run_bench_file(*o);
    };
  });
}

}  // namespace kvbm::tools
