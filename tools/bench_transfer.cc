// `kvbm bench transfer`: scattered block copies through the transfer engine, each path next
// to its ceiling measured in the same run: host<->host against the fastest host copy on all
// cores; GPU<->pinned host both ways against one large cudaMemcpy; GPU<->GPU against a
// device-to-device cudaMemcpy. GPU rows are skipped (and say why) without a GPU. Every byte is
// checked once.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/pattern.h"
#include "demo_ceilings.h"
#include "kvbm/storage.h"
#include "kvbm/transfer.h"
#include "kvbm/version.h"
#include "options.h"
#include "report.h"
#include "table.h"
#include "transfer/cuda_tuning.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchTransferOptions {
  size_t mib = 256;  // bytes moved per measurement
  std::vector<size_t> chunk_kib = {16, 64, 256, 1024, 2048};
  int iters = 5;
  size_t threads = 0;
  bool no_gpu = false;
  bool no_host = false;
  TransferEngineOptions engine;      // the engine's options (host_engine below)
  detail::CudaTuning tuning;         // the CUDA kernel's shape, for tuning sweeps
  std::string kernel = "warp";       // tuning.kernel by name
  std::string host_engine = "auto";  // engine.cuda_host_engine by name
  bool json = false;                 // one JSON object on stdout instead of the table
  double check = 0;                  // > 0: exit 1 when a row reaches less of its ceiling
};

// Median seconds of `iters` runs of `fn` (after one warm-up run).
template <typename Fn>
Result<double> median_seconds(int iters, Fn&& fn) {
  KVBM_TRY(fn());
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    auto t0 = Clock::now();
    KVBM_TRY(fn());
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Layouts whose chunks are `chunk` bytes: 2 layers x K/V, the destination stored outer-major
// and the block ids shuffled, so no two chunks coalesce: every chunk is its own copy.
LayoutConfig config_for(size_t total, size_t chunk) {
  LayoutConfig c;
  c.num_layers = 2;
  c.outer_dim = 2;
  c.page_size = 1;
  c.inner_dim = chunk;
  c.dtype_bytes = 1;
  c.alignment = 4096;
  c.num_blocks = std::max<size_t>(1, total / (chunk * 4));
  return c;
}

struct Row {
  std::string path;
  size_t chunk;
  double gbps = 0;
  double ceiling = 0;
  std::string ceiling_name;
  std::string note;
};

// The rows measured so far. Without --json each row prints as it finishes (the table's
// header before the first), so a long run shows its progress.
class Rows {
 public:
  explicit Rows(bool print)
      : table_(print ? std::make_unique<StreamTable>(
                           std::cout,
                           std::vector<std::string>{"path", "chunk", "GB/s", "ceiling GB/s",
                                                    "ratio", "ceiling", "note"},
                           std::vector<size_t>{22, 7, 7, 12, 5, 40, 0})
                     : nullptr) {}
  void push_back(const Row& r) {
    rows_.push_back(r);
    if (!table_) return;
    table_->add({r.path, r.chunk ? human_bytes(r.chunk) : "", r.gbps ? fixed(r.gbps, 2) : "",
                 r.ceiling ? fixed(r.ceiling, 2) : "",
                 r.gbps && r.ceiling ? fixed(r.gbps / r.ceiling, 2) : "", r.ceiling_name, r.note});
  }
  const std::vector<Row>& all() const { return rows_; }

 private:
  std::unique_ptr<StreamTable> table_;
  std::vector<Row> rows_;
};

Status verify(const Layout& src, const Layout& dst, std::span<const size_t> sids,
              std::span<const size_t> dids,
              const std::function<Status(void*, uint64_t, size_t)>& read_back) {
  std::vector<char> buf(src.config().chunk_bytes());
  for (size_t i = 0; i < sids.size(); ++i)
    for (size_t l = 0; l < src.config().num_layers; ++l)
      for (size_t o = 0; o < src.config().outer_dim; ++o) {
        auto m = dst.memory_region_unchecked(dids[i], l, o);
        KVBM_TRY(read_back(buf.data(), m.addr, m.size));
        auto s = src.memory_region_unchecked(sids[i], l, o);
        size_t at = detail::find_pattern_mismatch(buf.data(), buf.size(), 99, s.offset);
        if (at != SIZE_MAX) {
          return err(ErrorCode::Internal, "block ", dids[i], " layer ", l, " outer ", o,
                     " differs at byte ", at);
        }
      }
  return {};
}

// One engine measurement: copies every block of src into a shuffled dst.
Result<double> measure(TransferEngine& e, const Layout& src, const Layout& dst, int iters,
                       std::span<const size_t> sids, std::span<const size_t> dids) {
  uint64_t bytes = 0;
  auto s = median_seconds(iters, [&]() -> Status {
    auto t = e.copy(src, sids, dst, dids);
    if (!t) return t.error();
    bytes = t->bytes();
    return t->wait(std::chrono::minutes(5));
  });
  if (!s) return s.error();
  return bytes / *s / 1e9;
}

std::pair<std::vector<size_t>, std::vector<size_t>> ids_for(size_t n) {
  std::vector<size_t> s(n), d(n);
  std::iota(s.begin(), s.end(), 0);
  std::iota(d.begin(), d.end(), 0);
  std::shuffle(d.begin(), d.end(), std::mt19937_64(42));
  return {s, d};
}

void host_rows(TransferEngine& e, const BenchTransferOptions& o, Rows& rows) {
  const size_t total = o.mib << 20;
  // Host copies on all cores (tools/demo_ceilings): the ceiling of the host path.
  const auto ceiling = demo::host_copy_ceiling(total, e.host_threads(), o.iters);
  for (size_t kib : o.chunk_kib) {
    Row r{"host -> host",
          kib << 10,
          0,
          ceiling ? ceiling->gbps : 0,
          ceiling ? ceiling->name : ceiling.error().to_string(),
          ""};
    LayoutConfig c = config_for(total, kib << 10);
    auto src = Layout::allocate(c, LayoutKind::FullyContiguous, SystemAllocator());
    auto dst =
        Layout::allocate(c, LayoutKind::LayerSeparate, SystemAllocator(), LayerOrder::OuterMajor);
    if (!src || !dst) {
      r.note = (!src ? src.error() : dst.error()).to_string();
      rows.push_back(r);
      continue;
    }
    detail::fill_pattern(src->region(0).data(), src->region(0).size(), 99);
    auto [sids, dids] = ids_for(c.num_blocks);
    auto g = measure(e, *src, *dst, o.iters, sids, dids);
    if (!g) {
      r.note = g.error().to_string();
    } else {
      r.gbps = *g;
      auto v = verify(*src, *dst, sids, dids, [](void* b, uint64_t a, size_t n) -> Status {
        std::memcpy(b, reinterpret_cast<const void*>(a), n);
        return {};
      });
      r.note = v ? "verified" : v.error().to_string();
    }
    rows.push_back(r);
  }
}

#if KVBM_HAVE_CUDA
double cuda_ceiling(void* dst, const void* src, size_t bytes, int iters) {
  auto s = median_seconds(iters, [&]() -> Status {
    cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
    // A device-to-device cudaMemcpy returns before the copy ends: wait for it.
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return err(ErrorCode::Internal, cudaGetErrorString(e));
    return {};
  });
  return s ? bytes / *s / 1e9 : 0;
}

void gpu_rows(TransferEngine& e, const BenchTransferOptions& o, Rows& rows) {
  const size_t total = o.mib << 20;
  auto pa = PinnedStorage::allocate(total);
  auto da = DeviceStorage::allocate(total);
  auto db = DeviceStorage::allocate(total);
  if (!pa || !da || !db) {
    Error why = !pa ? pa.error() : !da ? da.error() : db.error();
    rows.push_back({"GPU rows", 0, 0, 0, "", "skipped: " + why.to_string()});
    return;
  }
  const double h2d = cuda_ceiling(da->data(), pa->data(), total, o.iters);
  const double d2h = cuda_ceiling(pa->data(), da->data(), total, o.iters);
  const double d2d = cuda_ceiling(db->data(), da->data(), total, o.iters);
  for (size_t kib : o.chunk_kib) {
    LayoutConfig c = config_for(total, kib << 10);
    auto host = Layout::allocate(c, LayoutKind::FullyContiguous, PinnedAllocator());
    auto host2 = Layout::allocate(c, LayoutKind::FullyContiguous, PinnedAllocator());
    auto dev =
        Layout::allocate(c, LayoutKind::LayerSeparate, DeviceAllocator(0), LayerOrder::OuterMajor);
    auto dev2 = Layout::allocate(c, LayoutKind::FullyContiguous, DeviceAllocator(0));
    if (!host || !host2 || !dev || !dev2) {
      rows.push_back({"GPU rows", kib << 10, 0, 0, "", "allocation failed"});
      continue;
    }
    detail::fill_pattern(host->region(0).data(), host->region(0).size(), 99);
    auto [sids, dids] = ids_for(c.num_blocks);
    auto from_device = [](void* b, uint64_t a, size_t n) -> Status {
      cudaError_t e = cudaMemcpy(b, reinterpret_cast<const void*>(a), n, cudaMemcpyDefault);
      if (e != cudaSuccess) return err(ErrorCode::Internal, cudaGetErrorString(e));
      return {};
    };
    auto run = [&](const char* name, const Layout& s, const Layout& d, std::span<const size_t> si,
                   std::span<const size_t> di, double ceiling, const char* cname,
                   const Layout* origin) {
      Row r{name, kib << 10, 0, ceiling, cname, ""};
      auto g = measure(e, s, d, o.iters, si, di);
      if (!g) {
        r.note = g.error().to_string();
      } else {
        r.gbps = *g;
        if (origin != nullptr) {
          auto v = verify(*origin, d, si, di, from_device);
          r.note = v ? "verified" : v.error().to_string();
        } else {
          r.note = "checked below";  // GPU -> GPU: its blocks are read back by the next row
        }
      }
      rows.push_back(r);
    };
    // The engine each pinned row goes through (measured on this machine, or forced).
    auto engine = [&](bool to_device) {
      auto en = e.cuda_host_engine(0, to_device, c.chunk_bytes());
      return std::string(en ? to_string(*en) : "?");
    };
    const std::string h2d_name = "pinned -> GPU (" + engine(true) + ")";
    const std::string d2h_name = "GPU -> pinned (" + engine(false) + ")";
    // pinned -> GPU (scattered into the shuffled device blocks), GPU -> GPU, GPU -> pinned.
    run(h2d_name.c_str(), *host, *dev, sids, dids, h2d, "cudaMemcpy H2D", &*host);
    run("GPU -> GPU", *dev, *dev2, dids, sids, d2d, "cudaMemcpy D2D", nullptr);
    // dev2 block b holds host block b, so host2 block dids[i] must hold host block sids[i].
    run(d2h_name.c_str(), *dev2, *host2, sids, dids, d2h, "cudaMemcpy D2H", &*host);
  }
}
#endif

// With --json, one JSON object (without it the rows printed as they were measured); the
// exit status: 1 when a row failed or (with --check) a measured row's ratio to its ceiling
// is below the target.
int report(const BenchTransferOptions& o, const TransferEngineOptions& eo,
           const std::vector<Row>& rows) {
  bool failed = false, missed = false;
  for (const Row& r : rows) {
    failed |= r.note != "verified" && r.note != "checked below" && r.note.rfind("skipped", 0) != 0;
    missed |= o.check > 0 && r.gbps > 0 && r.ceiling > 0 && r.gbps / r.ceiling < o.check;
  }
  if (o.json) {
    nlohmann::ordered_json j = {{"command", "kvbm bench transfer"},
                                {"kvbm", version()},
                                {"options",
                                 {{"mib", o.mib},
                                  {"iters", o.iters},
                                  {"kernel", to_string(detail::cuda_tuning(eo).kernel)},
                                  {"cuda_ctas_per_sm", detail::cuda_tuning(eo).ctas_per_sm},
                                  {"cuda_threads", detail::cuda_tuning(eo).threads}}},
                                {"rows", nlohmann::ordered_json::array()},
                                {"check", o.check},
                                {"verdict", failed   ? "failed"
                                            : missed ? "missed"
                                                     : "ok"}};
    for (const Row& r : rows) {
      j["rows"].push_back({{"path", r.path},
                           {"chunk_bytes", r.chunk},
                           {"gbps", r.gbps},
                           {"ceiling_gbps", r.ceiling},
                           {"ratio", r.gbps && r.ceiling ? r.gbps / r.ceiling : 0.0},
                           {"ceiling", r.ceiling_name},
                           {"note", r.note}});
    }
    std::cout << j.dump(2) << "\n";
  }
  if (missed && !failed)
    std::cerr << "kvbm bench transfer: a row's ratio is below --check " << o.check << "\n";
  return failed || missed ? 1 : 0;
}

int run_bench_transfer(const BenchTransferOptions& o) {
  TransferEngineOptions eo = o.engine;
  eo.host_threads = o.threads;
  detail::CudaTuning tuning = o.tuning;
  tuning.kernel = o.kernel == "warp"  ? CudaCopyKernel::Warp
                  : o.kernel == "cta" ? CudaCopyKernel::Cta
                                      : CudaCopyKernel::Baseline;
  eo.cuda_tuning = std::make_shared<const detail::CudaTuning>(tuning);
  eo.cuda_host_engine = o.host_engine == "kernel"   ? CudaHostEngine::Kernel
                        : o.host_engine == "batch"  ? CudaHostEngine::Batch
                        : o.host_engine == "split"  ? CudaHostEngine::Split
                        : o.host_engine == "gather" ? CudaHostEngine::Gather
                                                    : CudaHostEngine::Auto;
  auto e = TransferEngine::create(eo);
  if (!e) {
    std::cerr << "kvbm bench transfer: " << e.error().to_string() << "\n";
    return 1;
  }
  if (!o.json) {
    const detail::CudaTuning& t = detail::cuda_tuning(eo);
    std::cout << "kvbm bench transfer: " << o.mib << " MiB per measurement, median of " << o.iters
              << ", scattered (shuffled) blocks, no chunk coalesced; copy kernel "
              << to_string(t.kernel) << ", " << t.ctas_per_sm << " CTAs/SM x " << t.threads
              << " threads" << std::endl;
  }
  Rows rows(!o.json);
  if (!o.no_host) host_rows(**e, o, rows);
#if KVBM_HAVE_CUDA
  if (o.no_gpu) {
    rows.push_back({"GPU rows", 0, 0, 0, "", "skipped: --no-gpu"});
  } else if (auto n = cuda_device_count(); !n) {
    rows.push_back({"GPU rows", 0, 0, 0, "", "skipped: " + n.error().to_string()});
  } else {
    gpu_rows(**e, o, rows);
  }
#else
  rows.push_back({"GPU rows", 0, 0, 0, "", "skipped: built without CUDA"});
#endif
  return report(o, eo, rows.all());
}

}  // namespace

void add_bench_transfer(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<BenchTransferOptions>();
  auto* cmd = bench.add_subcommand(
      "transfer", "Scattered block copies (host, GPU<->pinned, GPU<->GPU) against ceilings");
  add_size_option(*cmd, "--mib", o->mib, "MiB moved per measurement", 1, size_t{1} << 16,
                  size_t{1} << 20);
  add_size_list_option(*cmd, "--chunk-kib", o->chunk_kib, "Chunk sizes in KiB, comma-separated", 1,
                       size_t{1} << 20, size_t{1} << 10);
  cmd->add_option("--iters", o->iters, "Timed runs per row (median)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--threads", o->threads, "Host copy threads (0: every core)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{1024}));
  cmd->add_flag("--no-gpu", o->no_gpu, "Skip the GPU rows");
  cmd->add_flag("--no-host", o->no_host, "Skip the host rows");
  cmd->add_option("--cuda-ctas-per-sm", o->tuning.ctas_per_sm, "Copy kernel CTAs per SM")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--cuda-threads", o->tuning.threads, "Copy kernel threads per CTA")
      ->check(CLI::IsMember({32, 64, 128, 256, 512, 1024}));
  add_size_option(*cmd, "--cuda-max-piece", o->tuning.max_piece,
                  "Copy kernel: largest piece, bytes", 4096, size_t{1} << 30);
  cmd->add_option("--cuda-kernel", o->kernel,
                  "Copy kernel: baseline (a CTA per piece), cta (a CTA per piece, 32-bit index "
                  "math, next ids prefetched), warp (as cta, a warp per piece of <= 32 KiB)")
      ->capture_default_str()
      ->check(CLI::IsMember({"baseline", "cta", "warp"}));
  cmd->add_option("--host-engine", o->host_engine,
                  "Pinned <-> GPU: auto (the fastest on this machine, measured once), kernel (the "
                  "copy kernel reads pinned memory), batch (copy engines, cudaMemcpyBatchAsync), "
                  "split (both at once on disjoint blocks), gather (pinned -> GPU: CPU threads "
                  "gather into pinned staging, one DMA, a scatter kernel)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "kernel", "batch", "split", "gather"}));
  cmd->add_option("--gather-kernel-share", o->tuning.gather_kernel_share,
                  "With --host-engine gather: the share of each request's blocks the copy kernel "
                  "moves beside the gather (auto measures its own)")
      ->check(CLI::Range(0.0, 0.95));
  cmd->add_flag("--json", o->json,
                "One JSON object on stdout: options, every row with its ceiling, the verdict");
  cmd->add_option("--check", o->check,
                  "Exit 1 when a row reaches less than this share of its ceiling (e.g. 0.8)")
      ->check(CLI::Range(0.0, 10.0));
  cmd->callback([o, &runner] { runner = [o] { return run_bench_transfer(*o); }; });
}

}  // namespace kvbm::tools
