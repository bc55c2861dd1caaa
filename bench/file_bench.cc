// DRAM <-> FILE through the agent's POSIX backend and, with --vram, VRAM <-> FILE through
// its GDS backend, next to the machine's own ceilings measured in the same run: raw
// UringBatch on a plain O_DIRECT file (plain buffers, and fixed buffers; the ratios use
// the faster), and dd oflag/iflag=direct.
//
//   file_bench [--mib 1024] [--req-kib 1024] [--qd 32] [--dir /path] [--vram auto|cufile|bounce]
//              [--cufile-threads N]  (the GDS backend's cufile_threads; default its own)
//              [--fixed-buffers 0|1] (the POSIX backend's fixed_buffers; default its own)
//              [--rounds 2]          (each figure the best of this many, paths interleaved)
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/pattern.h"
#include "common/uring_batch.h"
#include "kvbm/log.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

using namespace kvbm;
using namespace kvbm::xfer;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "file_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Options {
  uint64_t mib = 1024;
  uint64_t req_kib = 1024;
  unsigned qd = 32;
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  std::string vram_mode;       // empty: no VRAM rows; else the GDS backend's mode
  std::string cufile_threads;  // empty: the GDS backend's default
  std::string fixed_buffers;   // empty: the POSIX backend's default
  int rounds = 2;              // each path's best of this many, the paths interleaved
};

// Posts `reqs` keeping `qd` in flight; returns seconds.
double run_requests(std::vector<std::unique_ptr<Request>>& reqs, unsigned qd) {
  const auto t0 = Clock::now();
  std::deque<Request*> inflight;
  for (auto& r : reqs) {
    if (inflight.size() == qd) {
      if (auto st = inflight.front()->wait(std::chrono::seconds(60)); !st)
        die(st.error().to_string());
      inflight.pop_front();
    }
    if (auto st = r->post(); !st) die(st.error().to_string());
    inflight.push_back(r.get());
  }
  for (Request* r : inflight) {
    if (auto st = r->wait(std::chrono::seconds(60)); !st) die(st.error().to_string());
  }
  return seconds_since(t0);
}

// Writes `total` bytes from `slots` request-sized buffers at `base` (memory type `mem`)
// into `disk` and reads them back into the buffers at `back`; returns {write s, read s}.
std::pair<double, double> agent_round_trip(Agent& a, DiskStorage& disk, MemType mem, uint64_t base,
                                           uint64_t back, uint64_t slots, uint64_t req, uint64_t n,
                                           unsigned qd) {
  std::vector<std::unique_ptr<Request>> writes, reads;
  for (uint64_t i = 0; i < n; ++i) {
    DescList f(MemType::File, {{i * req, req, static_cast<uint64_t>(disk.fd())}});
    // Device id 0 both ways: host memory, or GPU 0.
    auto w = a.create_request(Op::Write, DescList(mem, {{base + (i % slots) * req, req, 0}}), f,
                              a.name());
    auto r = a.create_request(Op::Read, DescList(mem, {{back + (i % slots) * req, req, 0}}), f,
                              a.name());
    if (!w || !r) die((w ? r.error() : w.error()).to_string());
    writes.push_back(std::move(*w));
    reads.push_back(std::move(*r));
  }
  const double w = run_requests(writes, qd);
  const double r = run_requests(reads, qd);
  return {w, r};
}

double run_dd(const std::string& args) {
  const auto t0 = Clock::now();
  const std::string cmd = "dd " + args + " status=none";
  if (std::system(cmd.c_str()) != 0) die("failed: " + cmd);
  return seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--mib") {
      o.mib = std::stoull(v);
    } else if (k == "--req-kib") {
      o.req_kib = std::stoull(v);
    } else if (k == "--qd") {
      o.qd = static_cast<unsigned>(std::stoul(v));
    } else if (k == "--dir") {
      o.dir = v;
    } else if (k == "--vram") {
      o.vram_mode = v;
    } else if (k == "--cufile-threads") {
      o.cufile_threads = v;
    } else if (k == "--fixed-buffers") {
      o.fixed_buffers = v;
    } else if (k == "--rounds") {
      o.rounds = std::stoi(v);
    } else {
      die("unknown option " + k);
    }
  }
  const uint64_t req = o.req_kib << 10, total = o.mib << 20, n = total / req;
  if (n == 0 || o.qd == 0 || o.rounds < 1) die("need --mib >= request size, --qd and --rounds > 0");
  const uint64_t slots = std::min<uint64_t>(n, 64);  // DRAM ring reused across the file

  // 1. Through the agent.
  AgentConfig cfg;
  cfg.backends = {};
  auto agent = Agent::create("bench", cfg);
  if (!agent) die(agent.error().to_string());
  Agent& a = **agent;
  BackendParams posix{{"queue_depth", std::to_string(o.qd)}};
  if (!o.fixed_buffers.empty()) posix["fixed_buffers"] = o.fixed_buffers;
  if (auto st = a.create_backend("POSIX", posix); !st) die(st.error().to_string());
  auto disk = DiskStorage::allocate(total, o.dir);
  if (!disk) die(disk.error().to_string());
  if (!disk->direct_io()) std::printf("note: %s does not support O_DIRECT\n", o.dir.c_str());
  auto src = SystemAllocator().allocate(slots * req);
  auto dst = SystemAllocator().allocate(slots * req);
  if (!src || !dst) die("allocation failed");
  for (uint64_t s = 0; s < slots; ++s) {
    kvbm::detail::fill_pattern(static_cast<char*>(src->data()) + s * req, req, s);
  }
  if (auto st = register_with_agent(*disk, a); !st) die(st.error().to_string());
  if (auto st = register_with_agent(*src, a); !st) die(st.error().to_string());
  if (auto st = register_with_agent(*dst, a); !st) die(st.error().to_string());
  // One timed write and read back through the agent, every byte read checked (untimed).
  auto agent_once = [&] {
    std::memset(dst->data(), 0, slots * req);
    auto t =
        agent_round_trip(a, *disk, MemType::Dram, src->addr(), dst->addr(), slots, req, n, o.qd);
    for (uint64_t s = 0; s < slots; ++s) {
      if (kvbm::detail::find_pattern_mismatch(static_cast<char*>(dst->data()) + s * req, req, s) !=
          SIZE_MAX)
        die("verification failed in slot " + std::to_string(s));
    }
    return t;
  };

  // 1b. VRAM <-> FILE through the GDS backend (cuFile, or its pinned bounce path).
  std::function<std::pair<double, double>()> vram_once;  // set with --vram
  if (!o.vram_mode.empty()) {
#if KVBM_HAVE_CUDA
    set_log_level(LogLevel::Info);  // the GDS backend says which path each file takes
    BackendParams gds{{"mode", o.vram_mode}};
    if (!o.cufile_threads.empty()) gds["cufile_threads"] = o.cufile_threads;
    if (auto st = a.create_backend("GDS", gds); !st) die(st.error().to_string());
    auto vdisk_r = DiskStorage::allocate(total, o.dir);
    auto vsrc_r = DeviceAllocator(0).allocate(slots * req);
    auto vdst_r = DeviceAllocator(0).allocate(slots * req);
    if (!vdisk_r || !vsrc_r || !vdst_r) die("VRAM bench: allocation failed");
    auto vdisk = std::make_shared<DiskStorage>(std::move(*vdisk_r));
    auto vsrc = std::make_shared<DeviceStorage>(std::move(*vsrc_r));
    auto vdst = std::make_shared<DeviceStorage>(std::move(*vdst_r));
    if (cudaMemcpy(vsrc->data(), src->data(), slots * req, cudaMemcpyHostToDevice) != cudaSuccess)
      die("VRAM bench: cudaMemcpy");
    for (RegisterableStorage* s :
         std::initializer_list<RegisterableStorage*>{vdisk.get(), vsrc.get(), vdst.get()}) {
      if (auto st = register_with_agent(*s, a); !st) die(st.error().to_string());
    }
    vram_once = [&a, vdisk, vsrc, vdst, slots, req, n, qd = o.qd] {
      if (cudaMemset(vdst->data(), 0, slots * req) != cudaSuccess) die("VRAM bench: cudaMemset");
      auto t =
          agent_round_trip(a, *vdisk, MemType::Vram, vsrc->addr(), vdst->addr(), slots, req, n, qd);
      std::vector<char> check(slots * req);
      if (cudaMemcpy(check.data(), vdst->data(), check.size(), cudaMemcpyDeviceToHost) !=
          cudaSuccess)
        die("VRAM bench: cudaMemcpy back");
      for (uint64_t s = 0; s < slots; ++s) {
        if (kvbm::detail::find_pattern_mismatch(check.data() + s * req, req, s) != SIZE_MAX)
          die("VRAM verification failed in slot " + std::to_string(s));
      }
      return t;
    };
#else
    die("--vram: built without CUDA");
#endif
  }

  // 2. Ceiling: raw UringBatch on a plain O_DIRECT file, same request size and depth, from
  // plain buffers and then from fixed ones (a second ring, so the first stays plain).
  const auto raw_path = o.dir / "kvbm-file-bench-raw";
  const int fd = ::open(raw_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) die("open " + raw_path.string() + ": " + std::strerror(errno));
  if (::fallocate(fd, 0, 0, static_cast<off_t>(total)) != 0) die("fallocate raw file");
  std::vector<kvbm::detail::FileOp> wops, rops;
  for (uint64_t i = 0; i < n; ++i) {
    wops.push_back({kvbm::detail::FileOp::Kind::Write, fd, i * req,
                    static_cast<char*>(src->data()) + (i % slots) * req, req});
    rops.push_back({kvbm::detail::FileOp::Kind::Read, fd, i * req,
                    static_cast<char*>(dst->data()) + (i % slots) * req, req});
  }
  // {write s, read s} of wops and rops through a fresh ring.
  auto raw = [&](bool fixed) {
    auto batch = kvbm::detail::UringBatch::create(o.qd);
    if (!batch) die(batch.error().to_string());
    if (fixed && !((*batch)->add_fixed(src->data(), slots * req) &&
                   (*batch)->add_fixed(dst->data(), slots * req))) {
      die("the kernel refused fixed buffers (see the log)");
    }
    auto t0 = Clock::now();
    if (auto st = (*batch)->run(wops); !st) die(st.error().to_string());
    const double w = seconds_since(t0);
    t0 = Clock::now();
    if (auto st = (*batch)->run(rops); !st) die(st.error().to_string());
    return std::pair{w, seconds_since(t0)};
  };
  // Each path's best of o.rounds, the paths taking turns: a shared disk's speed drifts
  // between seconds, and a path timed only first or only last would carry that drift.
  constexpr double kNever = 1e30;
  double agent_w = kNever, agent_r = kNever, vram_w = kNever, vram_r = kNever;
  double plain_w = kNever, plain_r = kNever, fixed_w = kNever, fixed_r = kNever;
  auto keep_best = [](std::pair<double, double> t, double& w, double& r) {
    w = std::min(w, t.first);
    r = std::min(r, t.second);
  };
  for (int round = 0; round < o.rounds; ++round) {
    keep_best(agent_once(), agent_w, agent_r);
    if (vram_once) keep_best(vram_once(), vram_w, vram_r);
    keep_best(raw(false), plain_w, plain_r);
    keep_best(raw(true), fixed_w, fixed_r);
  }
  const double raw_w = std::min(plain_w, fixed_w), raw_r = std::min(plain_r, fixed_r);
  ::close(fd);

  // 3. dd with direct I/O, 1 MiB blocks.
  const std::string count = std::to_string(total >> 20);
  const double dd_w = run_dd("if=/dev/zero of=" + raw_path.string() + " bs=1M count=" + count +
                             " oflag=direct conv=notrunc");
  const double dd_r =
      run_dd("if=" + raw_path.string() + " of=/dev/null bs=1M count=" + count + " iflag=direct");
  std::filesystem::remove(raw_path);

  auto gbs = [&](double s) { return static_cast<double>(total) / s / 1e9; };
  std::printf("file_bench: %llu MiB in %llu KiB requests, queue depth %u, dir %s, best of %d\n",
              static_cast<unsigned long long>(o.mib), static_cast<unsigned long long>(o.req_kib),
              o.qd, o.dir.c_str(), o.rounds);
  std::printf("%-24s %10s %10s\n", "path", "write GB/s", "read GB/s");
  std::printf("%-24s %10.2f %10.2f\n", "agent POSIX (DRAM<->FILE)", gbs(agent_w), gbs(agent_r));
  if (!o.vram_mode.empty()) {
    std::printf("%-24s %10.2f %10.2f   (GDS mode=%s%s%s; the log above says cuFile or bounce)\n",
                "agent GDS (VRAM<->FILE)", gbs(vram_w), gbs(vram_r), o.vram_mode.c_str(),
                o.cufile_threads.empty() ? "" : ", cufile_threads=", o.cufile_threads.c_str());
  }
  std::printf("%-24s %10.2f %10.2f\n", "raw io_uring O_DIRECT", gbs(plain_w), gbs(plain_r));
  std::printf("%-24s %10.2f %10.2f\n", "raw, fixed buffers", gbs(fixed_w), gbs(fixed_r));
  std::printf("%-24s %10.2f %10.2f\n", "dd bs=1M direct", gbs(dd_w), gbs(dd_r));
  std::printf("%-24s %9.0f%% %9.0f%%\n", "agent / best raw", 100 * raw_w / agent_w,
              100 * raw_r / agent_r);
  if (!o.vram_mode.empty()) {
    std::printf("%-24s %9.0f%% %9.0f%%\n", "GDS VRAM / best raw", 100 * raw_w / vram_w,
                100 * raw_r / vram_r);
  }
  std::printf("%-24s %9.0f%% %9.0f%%\n", "agent / dd", 100 * dd_w / agent_w, 100 * dd_r / agent_r);
  return 0;
}
