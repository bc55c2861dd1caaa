// `kvbm bench gpu`: GPU memory through the agent, each figure as a ratio to a ceiling
// measured in the same run. Requests are kept `--depth` in flight (as an inference server
// keeps many block requests), and so are the ceilings' copies:
//   ipc      VRAM -> VRAM of another process (CUDA IPC)   vs  cudaMemcpyAsync device->device
//                                                            of the same size, depth in
//                                                            flight on one stream
//   h2d/d2h  pinned DRAM <-> VRAM within the agent          vs  one large cudaMemcpy
//   staged   VRAM -> VRAM of another process, staged over UCX (forced)
//                                                        vs  the agent's DRAM -> DRAM over
//                                                            UCX (same-host path off: the
//                                                            staged path is for other hosts)
// A context column gives the same-size copy one at a time (ipc) or depth in flight
// (h2d/d2h). A latency section puts the p50 of one small h2d request (post, spin until
// done) next to one cudaMemcpyAsync + cudaStreamSynchronize: the agent's own cost per
// request. The peers are this program again (`kvbm bench gpu --target ipc|staged`),
// started before this process touches CUDA. Without a GPU it prints why and exits 0.
// Rows print as they finish; with --json, one JSON document at the end instead (progress
// on stderr when it is a terminal), and --check makes a row below its target exit 1.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/version.h"
#include "kvbm/xfer/agent.h"
#include "options.h"
#include "report.h"
#include "subprocess.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

Json options_json(const BenchGpuOptions& o) {
  return {{"max_mib", o.max_mib},
          {"iters", o.iters},
          {"chunk_bytes", o.chunk_bytes},
          {"bounce_buffers", o.bounce_buffers},
          {"depth", o.depth},
          {"cuda_streams", o.cuda_streams},
          {"polling", o.polling},
          {"lat_iters", o.lat_iters},
          {"ucx_tls", getenv("UCX_TLS") ? getenv("UCX_TLS") : "(default)"}};
}

// The document's head: what ran, where, with which versions and options.
Json document(const BenchGpuOptions& o) {
  return {{"command", "kvbm bench gpu"},
          {"kvbm", version()},
          {"versions", versions_json()},
          {"machine", machine_json()},
          {"options", options_json(o)}};
}

// Nothing measured (no GPU, no CUDA build): exit 0, saying why.
int skipped(const BenchGpuOptions& o, const std::string& why) {
  if (!o.json) {
    std::cout << "bench gpu: skipped (" << why << ")\n";
    return 0;
  }
  Json j = document(o);
  j["rows"] = Json::array();
  j["check"] = o.check;
  j["verdict"] = "skipped";
  j["skipped"] = why;
  print_json(j);
  return 0;
}

}  // namespace

#if !KVBM_HAVE_CUDA

int run_bench_gpu(const BenchGpuOptions& o) {
  return skipped(o, "kvbm was built without CUDA");
}

#else

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double gbps(size_t bytes, Clock::duration d) {
  const double s = std::chrono::duration<double>(d).count();
  return s > 0 ? bytes / s / 1e9 : 0;
}

xfer::BackendParams staged_params(const BenchGpuOptions& o) {
  return {{"staged", "1"},
          {"chunk_bytes", std::to_string(o.chunk_bytes)},
          {"bounce_buffers", std::to_string(o.bounce_buffers)}};
}

// The peer: an agent with one VRAM and one DRAM buffer, serving its metadata until its
// stdin closes.
int serve_target(const BenchGpuOptions& o) {
  const size_t bytes = o.max_mib << 20;
  const bool staged = o.target == "staged";
  auto fail = [](const std::string& why) {
    std::cout << "ERR " << why << std::endl;
    return 1;
  };
  xfer::AgentConfig config;
  config.add_cuda_if_gpu = !staged;
  auto agent = xfer::Agent::create("bench-" + o.target, config);
  if (!agent) return fail(agent.error().to_string());
  if (staged) {
    if (auto st = (*agent)->create_backend("CUDA", staged_params(o)); !st)
      return fail(st.error().to_string());
  }
  auto vram = DeviceAllocator(0).allocate(bytes);
  if (!vram) return fail(vram.error().to_string());
  auto dram = SystemAllocator().allocate(bytes);
  if (!dram) return fail(dram.error().to_string());
  if (auto st = register_with_agent(*vram, **agent); !st) return fail(st.error().to_string());
  if (auto st = register_with_agent(*dram, **agent); !st) return fail(st.error().to_string());
  auto port = (*agent)->listen("127.0.0.1", 0);
  if (!port) return fail(port.error().to_string());
  std::cout << "READY " << *port << " " << vram->addr() << " " << dram->addr() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  return 0;
}

// A target process behind pipes; its stdin is closed, and it is reaped, on destruction.
class GpuTarget {
 public:
  GpuTarget(const BenchGpuOptions& o, const std::string& mode) {
    Subprocess::Options opt;
    opt.pipe_stdin = true;
    opt.pipe_stdout = true;
    auto p = spawn_child({"/proc/self/exe", "bench", "gpu", "--target", mode, "--max-mib",
                          std::to_string(o.max_mib), "--chunk-bytes", std::to_string(o.chunk_bytes),
                          "--bounce-buffers", std::to_string(o.bounce_buffers)},
                         opt);
    if (!p) {
      error_ = p.error().to_string();
      return;
    }
    process_.emplace(std::move(*p));
    auto line = process_->read_line(std::chrono::seconds(60));
    if (!line) {
      error_ = "target process did not answer: " + line.error().to_string();
      return;
    }
    std::istringstream s(*line);
    std::string word;
    s >> word >> port_ >> vram_ >> dram_;
    if (word != "READY") error_ = "target process: " + *line;
  }
  const std::string& error() const { return error_; }
  uint16_t port() const { return port_; }
  uint64_t vram() const { return vram_; }
  uint64_t dram() const { return dram_; }

 private:
  std::optional<Subprocess> process_;  // its destructor ends the target (EOF, then SIGKILL)
  uint16_t port_ = 0;
  uint64_t vram_ = 0, dram_ = 0;
  std::string error_;
};

// Waits for a posted request, spinning on its state so that the wait adds no wake-up
// latency.
Status spin(xfer::Request& req) {
  for (;;) {
    auto s = req.state();
    if (s == xfer::XferState::Done) return {};
    if (s == xfer::XferState::Error) return req.error();
  }
}

// Bandwidth of `iters` completions of `depth` prepared requests (same descriptors) kept in
// flight: all are posted, then the oldest is waited for and posted again until `iters`
// have completed, after 2 warm-up rounds. Depth 1: one request at a time.
Result<double> time_request(xfer::Agent& a, xfer::Op op, const xfer::DescList& l,
                            const xfer::DescList& r, const std::string& peer, int iters,
                            int depth) {
  using RequestPtr = std::unique_ptr<xfer::Request>;
  std::vector<RequestPtr> reqs;
  for (int i = 0; i < depth; ++i) {
    auto req = a.create_request(op, l, r, peer);
    if (!req) return req.error();
    reqs.push_back(std::move(*req));
  }
  for (int round = 0; round < 2; ++round) {
    for (auto& q : reqs) KVBM_TRY(q->post());
    for (auto& q : reqs) KVBM_TRY(spin(*q));
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < std::min(depth, iters); ++i) KVBM_TRY(reqs[i]->post());
  // Completion `done` is post number `done`, made with request done % depth.
  for (int done = 0; done < iters; ++done) {
    xfer::Request& q = *reqs[done % depth];
    KVBM_TRY(spin(q));
    if (done + depth < iters) KVBM_TRY(q.post());
  }
  uint64_t bytes = 0;
  for (const auto& d : l.descs) bytes += d.len;
  return gbps(bytes * iters, Clock::now() - t0);
}

// cudaMemcpy bandwidth, each copy waited for before the next: the pattern of one request
// at a time, so the ratio shows what the agent adds.
double time_memcpy(void* dst, const void* src, size_t bytes, int iters) {
  cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);  // warm-up
  cudaDeviceSynchronize();
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) {
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, nullptr);
    cudaStreamSynchronize(nullptr);
  }
  return gbps(bytes * iters, Clock::now() - t0);
}

// A non-blocking stream and a ring of events for the ceilings; released on destruction.
class CudaQueue {
 public:
  explicit CudaQueue(int events) : ring_(events, nullptr) {
    ok_ = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) == cudaSuccess;
    for (auto& e : ring_)
      ok_ = ok_ && cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess;
    if (!ok_) cudaGetLastError();
  }
  ~CudaQueue() {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (auto e : ring_)
      if (e != nullptr) cudaEventDestroy(e);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    cudaGetLastError();
  }
  CudaQueue(const CudaQueue&) = delete;
  CudaQueue& operator=(const CudaQueue&) = delete;
  bool ok() const { return ok_; }
  cudaStream_t stream() const { return stream_; }
  cudaEvent_t event(size_t i) const { return ring_[i % ring_.size()]; }
  size_t size() const { return ring_.size(); }

 private:
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> ring_;
  bool ok_ = false;
};

// cudaMemcpyAsync bandwidth with q.size() copies in flight on one stream: an event is
// recorded after each copy, and the oldest one is waited for before the next copy is
// issued, so the figure is the device's own rate at this size under the queueing that
// in-flight requests get. Depth 1 is time_memcpy; 0 on a CUDA error.
double time_memcpy_inflight(CudaQueue& q, void* dst, const void* src, size_t bytes, int iters) {
  if (q.size() <= 1) return time_memcpy(dst, src, bytes, iters);
  if (!q.ok()) return 0;
  bool ok = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, q.stream()) == cudaSuccess &&
            cudaStreamSynchronize(q.stream()) == cudaSuccess;  // warm-up
  const auto t0 = Clock::now();
  for (int i = 0; ok && i < iters; ++i) {
    if (static_cast<size_t>(i) >= q.size()) ok = cudaEventSynchronize(q.event(i)) == cudaSuccess;
    ok = ok && cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, q.stream()) == cudaSuccess;
    ok = ok && cudaEventRecord(q.event(i), q.stream()) == cudaSuccess;
  }
  ok = cudaStreamSynchronize(q.stream()) == cudaSuccess && ok;
  const double v = gbps(bytes * iters, Clock::now() - t0);
  if (!ok) cudaGetLastError();
  return ok ? v : 0;
}

// The median, in microseconds, of `iters` timed runs of `fn` (after 3 warm-ups).
template <typename Fn>
Result<double> p50_us(int iters, Fn&& fn) {
  for (int i = 0; i < 3; ++i) KVBM_TRY(fn());
  std::vector<double> t;
  t.reserve(iters);
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    KVBM_TRY(fn());
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

std::string ratio(double v, double ceiling) {
  return ceiling > 0 ? fixed(v / ceiling, 2) : "-";
}

using xfer::DescList;
using xfer::MemType;
using xfer::Op;

constexpr size_t kDescs = 64;  // descriptors per request of the scattered section

// An agent whose CUDA backend takes other parameters, with the bench's buffers registered.
struct OtherAgent {
  std::unique_ptr<xfer::Agent> agent;
  std::vector<std::unique_ptr<xfer::MemoryRegistration> > regs;  // released before the agent
};

// One run against the two target processes, its sections as steps. Members are declared in
// the order they are made: storages registered with the agents go before the agents do.
class GpuBench {
 public:
  GpuBench(const BenchGpuOptions& o, const GpuTarget& ipc, const GpuTarget& staged)
      : o_(o),
        ipc_(ipc),
        staged_(staged),
        max_(o.max_mib << 20),
        inflight_(std::to_string(o.depth) + " in flight") {}

  int run() {
    if (!make_agents() || !make_buffers()) return 1;
    print_header();
    queue_.emplace(o_.depth);
    h2d_ceiling_ = time_memcpy(a_->data(), pinned_->data(), max_, 3);
    d2h_ceiling_ = time_memcpy(pinned_->data(), a_->data(), max_, 3);
    for (size_t mib = 1; mib <= o_.max_mib; mib *= 4) bandwidth_at(mib << 20);
    scattered_section();
    latency_section();
    return finish();
  }

 private:
  bool make_agents();
  bool make_buffers();
  void print_header() const;
  void bandwidth_at(size_t n);
  void report(const std::string& path, size_t n, Result<double> v, const std::string& ceil,
              double c, double target, const std::string& ctx, double x);
  Result<OtherAgent> other_agent(const std::string& name, const xfer::BackendParams& params);
  void scattered_section();
  void scattered_at(size_t piece);
  std::vector<std::string> three(Op op, const DescList& local, const DescList& remote,
                                 double ceiling, Json& row);
  int it_for(const DescList& d) const;
  void latency_section();
  void latency_at(StreamTable& lat, size_t n);
  int finish();

  // Each row as it finishes: a table line, or with --json a row of the document (and a
  // progress line on a terminal).
  void emit(StreamTable& table, const std::vector<std::string>& cells, Json row) {
    if (!o_.json) return table.add(cells);
    progress("bench gpu: " + cells[0] + ", " + cells[1] + ": " + cells[2]);
    rows_.push_back(std::move(row));
  }
  static bool fail(const Error& e) {
    std::cerr << "bench gpu: " << e.to_string() << "\n";
    return false;
  }

  const BenchGpuOptions& o_;
  const GpuTarget& ipc_;
  const GpuTarget& staged_;
  const size_t max_;
  const std::string inflight_;
  xfer::AgentConfig config_;
  std::unique_ptr<xfer::Agent> agent_, stager_;
  std::optional<DeviceStorage> a_, b_;
  std::optional<PinnedStorage> pinned_;
  std::optional<SystemStorage> host_;
  std::unique_ptr<xfer::MemoryRegistration> stager_vram_, stager_dram_;
  std::string ipc_name_, staged_name_;
  Json rows_ = Json::array();
  bool failed_ = false, missed_ = false;
  StreamTable table_{std::cout,
                     {"path", "size", "GB/s", "ceiling", "ceiling GB/s", "ratio", "target",
                      "context", "context GB/s"},
                     {17, 7, 5, 37, 5, 5, 7, 16, 5}};
  StreamTable scattered_table_{std::cout,
                               {"path", "request", "GB/s", "ratio", "kernel=0 GB/s", "ratio",
                                "a call each GB/s", "ratio", "ceiling", "ceiling GB/s"},
                               {16, 16, 5, 5, 5, 5, 5, 5, 30, 5}};
  std::optional<CudaQueue> queue_;
  double h2d_ceiling_ = 0, d2h_ceiling_ = 0;
  std::optional<Result<OtherAgent> > no_kernel_, one_by_one_;
};

// Agents first: storages registered with them are destroyed (deregistered) before them.
bool GpuBench::make_agents() {
  config_.add_cuda_if_gpu = false;  // created below with --cuda-streams
  config_.progress_thread = !o_.polling;
  auto agent = xfer::Agent::create("bench", config_);
  xfer::AgentConfig staged_config;
  staged_config.add_cuda_if_gpu = false;
  staged_config.backends = {};
  auto stager = xfer::Agent::create("bench-stager", staged_config);
  if (!agent || !stager) return fail(agent ? stager.error() : agent.error());
  agent_ = std::move(*agent);
  stager_ = std::move(*stager);
  if (auto st = agent_->create_backend("CUDA", {{"streams", std::to_string(o_.cuda_streams)}}); !st)
    return fail(st.error());
  if (auto st = stager_->create_backend("UCX", {{"same_host", "off"}}); !st)
    return fail(st.error());
  if (auto st = stager_->create_backend("CUDA", staged_params(o_)); !st) return fail(st.error());
  return true;
}

bool GpuBench::make_buffers() {
  auto a = DeviceAllocator(0).allocate(max_);
  auto b = DeviceAllocator(0).allocate(max_);
  auto pinned = PinnedAllocator().allocate(max_);
  auto host = SystemAllocator().allocate(max_);
  if (!a || !b || !pinned || !host) {
    std::cerr << "bench gpu: allocation of " << human_bytes(max_) << " buffers failed\n";
    return false;
  }
  a_.emplace(std::move(*a));
  b_.emplace(std::move(*b));
  pinned_.emplace(std::move(*pinned));
  host_.emplace(std::move(*host));
  // The stager's VRAM is a sub-range of `a` registered separately; `b` and the host
  // buffers belong to the main agent.
  for (auto* s : std::initializer_list<RegisterableStorage*>{&*a_, &*b_, &*pinned_}) {
    if (auto st = register_with_agent(*s, *agent_); !st) return fail(st.error());
  }
  auto stager_vram = stager_->register_memory(DescList(MemType::Vram, {{a_->addr(), max_, 0}}));
  auto stager_dram = stager_->register_memory(DescList(MemType::Dram, {{host_->addr(), max_, 0}}));
  auto ipc_name = agent_->fetch_remote_metadata("127.0.0.1", ipc_.port());
  auto staged_name = stager_->fetch_remote_metadata("127.0.0.1", staged_.port());
  if (!stager_vram || !stager_dram || !ipc_name || !staged_name) {
    std::cerr << "bench gpu: setup failed\n";
    return false;
  }
  stager_vram_ = std::move(*stager_vram);
  stager_dram_ = std::move(*stager_dram);
  ipc_name_ = *ipc_name;
  staged_name_ = *staged_name;
  return true;
}

void GpuBench::print_header() const {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  if (o_.json) return;
  std::cout << "GPU 0: " << prop.name << "; depth " << o_.depth
            << " (requests and ceiling copies in flight); " << o_.cuda_streams << " CUDA streams; "
            << (o_.polling ? "polling" : "progress thread") << "; staged chunk "
            << human_bytes(o_.chunk_bytes) << " x " << o_.bounce_buffers
            << " bounce buffers; UCX_TLS=" << (getenv("UCX_TLS") ? getenv("UCX_TLS") : "(default)")
            << std::endl;
}

// `ctx` is a same-size copy rate for context ("" when none): not part of the ratio.
void GpuBench::report(const std::string& path, size_t n, Result<double> v, const std::string& ceil,
                      double c, double target, const std::string& ctx, double x) {
  Json row = {{"section", "bandwidth"},
              {"path", path},
              {"bytes", n},
              {"gbps", v ? *v : 0.0},
              {"ceiling", ceil},
              {"ceiling_gbps", c},
              {"ratio", v && c > 0 ? *v / c : 0.0},
              {"target", target},
              {"context", ctx},
              {"context_gbps", ctx.empty() ? 0.0 : x}};
  const std::string ctx_gbps = ctx.empty() ? "-" : fixed(x);
  if (!v) {
    row["error"] = v.error().to_string();
    failed_ = true;
    return emit(table_,
                {path, human_bytes(n), "ERR", ceil, fixed(c), "-", v.error().to_string(),
                 ctx.empty() ? "-" : ctx, ctx_gbps},
                std::move(row));
  }
  missed_ |= c > 0 && *v / c < target;
  emit(table_,
       {path, human_bytes(n), fixed(*v), ceil, fixed(c), ratio(*v, c), ">= " + fixed(target, 2),
        ctx.empty() ? "-" : ctx, ctx_gbps},
       std::move(row));
}

// The bandwidth rows of one size `n`.
void GpuBench::bandwidth_at(size_t n) {
  const size_t mib = n >> 20;
  const int depth = o_.depth;
  // The same bytes at every size (800 MiB by default; with 80 MiB, tens of microseconds
  // of copying on the GPU, a ratio swung by 0.3 between runs), and at least two rounds
  // of `depth`, so that most completions are timed with the queue full.
  const int it =
      std::max({3, static_cast<int>(o_.iters * 64 / std::max<size_t>(mib, 1) / 16), 2 * depth});
  CudaQueue& queue = *queue_;
  const double d2d_one = time_memcpy(b_->data(), a_->data(), n, it);
  const double d2d = time_memcpy_inflight(queue, b_->data(), a_->data(), n, it);
  report("ipc vram->vram", n,
         time_request(*agent_, Op::Write, DescList(MemType::Vram, {{a_->addr(), n, 0}}),
                      DescList(MemType::Vram, {{ipc_.vram(), n, 0}}), ipc_name_, it, depth),
         "d2d, " + inflight_, d2d, 0.85, "d2d, 1 at a time", d2d_one);
  report("h2d pinned->vram", n,
         time_request(*agent_, Op::Read, DescList(MemType::Vram, {{a_->addr(), n, 0}}),
                      DescList(MemType::Dram, {{pinned_->addr(), n, 0}}), "bench", it, depth),
         "1 large h2d", h2d_ceiling_, 0.9, "h2d, " + inflight_,
         time_memcpy_inflight(queue, a_->data(), pinned_->data(), n, it));
  report("d2h vram->pinned", n,
         time_request(*agent_, Op::Write, DescList(MemType::Vram, {{a_->addr(), n, 0}}),
                      DescList(MemType::Dram, {{pinned_->addr(), n, 0}}), "bench", it, depth),
         "1 large d2h", d2h_ceiling_, 0.9, "d2h, " + inflight_,
         time_memcpy_inflight(queue, pinned_->data(), a_->data(), n, it));
  // UCX between processes varies from one short run to the next: the best of 3 runs each,
  // interleaved, so both sides see the same machine.
  Result<double> dram = 0.0, vram = 0.0;
  for (int round = 0; round < 3 && dram && vram; ++round) {
    auto d =
        time_request(*stager_, Op::Write, DescList(MemType::Dram, {{host_->addr(), n, 0}}),
                     DescList(MemType::Dram, {{staged_.dram(), n, 0}}), staged_name_, it, depth);
    auto v =
        time_request(*stager_, Op::Write, DescList(MemType::Vram, {{a_->addr(), n, 0}}),
                     DescList(MemType::Vram, {{staged_.vram(), n, 0}}), staged_name_, it, depth);
    dram = d ? Result<double>(std::max(*dram, *d)) : d;
    vram = v ? Result<double>(std::max(*vram, *v)) : v;
  }
  report("staged vram->vram", n, vram, "agent dram->dram over UCX (best of 3)", dram ? *dram : 0,
         0.8, "", 0);
}

Result<OtherAgent> GpuBench::other_agent(const std::string& name,
                                         const xfer::BackendParams& params) {
  xfer::AgentConfig c = config_;
  c.backends = {};
  auto ag = xfer::Agent::create(name, c);
  if (!ag) return ag.error();
  OtherAgent o{std::move(*ag), {}};
  KVBM_TRY(o.agent->create_backend("CUDA", params));
  for (auto [addr, type] :
       {std::pair{a_->addr(), MemType::Vram}, std::pair{b_->addr(), MemType::Vram},
        std::pair{pinned_->addr(), MemType::Dram}}) {
    auto reg = o.agent->register_memory(DescList(type, {{addr, max_, 0}}));
    if (!reg) return reg.error();
    o.regs.push_back(std::move(*reg));
  }
  return o;
}

// Requests per point: about 800 MiB worth, at least twice the depth.
int GpuBench::it_for(const DescList& d) const {
  uint64_t bytes = 0;
  for (const auto& x : d.descs) bytes += x.len;
  return std::max(2 * o_.depth, static_cast<int>((800u << 20) / std::max<uint64_t>(bytes, 1)));
}

// One request kind through the three agents: GB/s and ratio to `ceiling` each, as cells
// and as the JSON row's figures (an error names the agent's failure).
std::vector<std::string> GpuBench::three(Op op, const DescList& local, const DescList& remote,
                                         double ceiling, Json& row) {
  std::vector<std::string> cells;
  auto v = time_request(*agent_, op, local, remote, "bench", it_for(local), o_.depth);
  if (!v) failed_ = true;
  auto add = [&](const Result<double>& r, const std::string& key) {
    cells.push_back(r ? fixed(*r) : r.error().to_string());
    cells.push_back(r ? ratio(*r, ceiling) : "-");
    row[key + "gbps"] = r ? *r : 0.0;
    row[key + "ratio"] = r && ceiling > 0 ? *r / ceiling : 0.0;
    if (!r) row[key + "error"] = r.error().to_string();
  };
  add(v, "");
  for (auto* other : {&*no_kernel_, &*one_by_one_}) {
    Result<double> w = *other ? time_request(*(*other)->agent, op, local, remote,
                                             (*other)->agent->name(), it_for(local), o_.depth)
                              : Result<double>(other->error());
    add(w, other == &*no_kernel_ ? "kernel0_" : "call_each_");
  }
  return cells;
}

// Scattered descriptors: requests of 64 descriptors, the second side in reversed order,
// through the CUDA backend's one call per request (VRAM to VRAM, and small copies with
// mapped pinned memory: the copy kernel; else cudaMemcpyBatchAsync) and, for comparison,
// through agents whose CUDA backend never launches the kernel (kernel=0) and makes a
// cudaMemcpyAsync per descriptor (batch=0, kernel=0).
void GpuBench::scattered_section() {
  if (!o_.json) std::cout << "\nScattered descriptors, " << o_.depth << " requests in flight\n";
  no_kernel_.emplace(other_agent("bench-no-kernel", {{"kernel", "0"}}));
  one_by_one_.emplace(other_agent("bench-one-by-one", {{"batch", "0"}, {"kernel", "0"}}));
  for (size_t piece : {size_t{16} << 10, size_t{64} << 10, size_t{256} << 10}) {
    if (kDescs * piece > max_) break;
    scattered_at(piece);
  }
}

void GpuBench::scattered_at(size_t piece) {
  DescList vram(MemType::Vram), dram(MemType::Dram);
  for (size_t i = 0; i < kDescs; ++i) {
    vram.add(a_->addr() + i * piece, piece, 0);
    dram.add(pinned_->addr() + (kDescs - 1 - i) * piece, piece, 0);
  }
  // VRAM -> VRAM (a to b): one copy kernel launch, against a cudaMemcpyAsync each.
  DescList vram_b(MemType::Vram);
  for (size_t i = 0; i < kDescs; ++i) vram_b.add(b_->addr() + (kDescs - 1 - i) * piece, piece, 0);
  // Its ceiling: one copy of the request's size, as many in flight (what the IPC rows use):
  // a request of a few MiB sits in the GPU's L2 cache, one large copy does not.
  const double d2d_ceiling =
      time_memcpy_inflight(*queue_, b_->data(), a_->data(), kDescs * piece, it_for(vram));
  auto row = [&](const std::string& path, Op op, const DescList& local, const DescList& remote,
                 const std::string& ceiling, double c) {
    Json j = {{"section", "scattered"}, {"path", path}, {"descs", kDescs}, {"piece_bytes", piece}};
    std::vector<std::string> cells = three(op, local, remote, c, j);
    j["ceiling"] = ceiling;
    j["ceiling_gbps"] = c;
    cells.insert(cells.begin(), {path, std::to_string(kDescs) + " x " + human_bytes(piece)});
    cells.push_back(ceiling);
    cells.push_back(fixed(c));
    emit(scattered_table_, cells, std::move(j));
  };
  row("d2d vram->vram", Op::Write, vram, vram_b, "d2d of the request's size, " + inflight_,
      d2d_ceiling);
  for (Op op : {Op::Read, Op::Write}) {
    const bool h2d = op == Op::Read;  // READ: the pinned bytes into VRAM
    const double c = h2d ? h2d_ceiling_ : d2h_ceiling_;
    row(h2d ? "h2d pinned->vram" : "d2h vram->pinned", op, vram, dram,
        h2d ? "1 large h2d" : "1 large d2h", c);
  }
}

// Latency: one small request at a time through the agent against the copy it makes.
void GpuBench::latency_section() {
  if (!o_.json) {
    std::cout << "\nLatency, one request at a time: p50 of " << o_.lat_iters
              << " runs (agent: post() and spin until done; copy: cudaMemcpyAsync + "
                 "cudaStreamSynchronize)\n";
  }
  StreamTable lat(std::cout,
                  {"h2d pinned->vram", "agent p50 us", "cudaMemcpyAsync p50 us", "agent adds us"},
                  {});
  for (size_t n : {size_t{4} << 10, size_t{1} << 20}) latency_at(lat, n);
}

void GpuBench::latency_at(StreamTable& lat, size_t n) {
  CudaQueue& queue = *queue_;
  auto req = agent_->create_request(Op::Read, DescList(MemType::Vram, {{a_->addr(), n, 0}}),
                                    DescList(MemType::Dram, {{pinned_->addr(), n, 0}}), "bench");
  Result<double> agent_us = req ? p50_us(o_.lat_iters,
                                         [&]() -> Status {
                                           KVBM_TRY((*req)->post());
                                           return spin(**req);
                                         })
                                : Result<double>(req.error());
  auto copy_us = p50_us(o_.lat_iters, [&]() -> Status {
    cudaError_t e = queue.ok() ? cudaMemcpyAsync(a_->data(), pinned_->data(), n, cudaMemcpyDefault,
                                                 queue.stream())
                               : cudaErrorInvalidResourceHandle;
    if (e == cudaSuccess) e = cudaStreamSynchronize(queue.stream());
    if (e != cudaSuccess) {
      cudaGetLastError();
      return err(ErrorCode::Internal, "cudaMemcpyAsync of ", n, " bytes: ", cudaGetErrorString(e));
    }
    return {};
  });
  Json row = {{"section", "latency"},
              {"path", "h2d pinned->vram"},
              {"bytes", n},
              {"agent_p50_us", agent_us ? *agent_us : 0.0},
              {"copy_p50_us", copy_us ? *copy_us : 0.0},
              {"agent_adds_us", agent_us && copy_us ? *agent_us - *copy_us : 0.0}};
  if (!agent_us || !copy_us) {
    row["error"] = (agent_us ? copy_us.error() : agent_us.error()).to_string();
    emit(lat,
         {human_bytes(n), agent_us ? fixed(*agent_us) : agent_us.error().to_string(),
          copy_us ? fixed(*copy_us) : copy_us.error().to_string(), "ERR"},
         std::move(row));
    failed_ = true;
    return;
  }
  emit(lat, {human_bytes(n), fixed(*agent_us), fixed(*copy_us), fixed(*agent_us - *copy_us)},
       std::move(row));
}

int GpuBench::finish() {
  if (o_.json) {
    Json j = document(o_);
    j["rows"] = std::move(rows_);
    j["check"] = o_.check;
    j["verdict"] = failed_ ? "failed" : missed_ ? "missed" : "ok";
    print_json(j);
  }
  if (missed_ && !failed_ && o_.check)
    std::cerr << "bench gpu: a row's ratio is below its target (--check)\n";
  return failed_ || (o_.check && missed_) ? 1 : 0;
}

}  // namespace

int run_bench_gpu(const BenchGpuOptions& o) {
  if (!o.target.empty()) return serve_target(o);
  // Peers first: they must start before this process initializes CUDA.
  GpuTarget ipc(o, "ipc");
  GpuTarget staged(o, "staged");
  auto gpus = cuda_device_count();
  if (!gpus) return skipped(o, gpus.error().to_string());
  for (const GpuTarget* t : {&ipc, &staged}) {
    if (!t->error().empty()) {
      std::cerr << "bench gpu: " << t->error() << "\n";
      return 1;
    }
  }
  return GpuBench(o, ipc, staged).run();
}

#endif

}  // namespace kvbm::tools

namespace kvbm::tools {

void add_bench_gpu(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<BenchGpuOptions>();
  auto* cmd = bench.add_subcommand(
      "gpu", "VRAM through the agent: IPC, pinned DRAM, staged over UCX (skips without a GPU)");
  add_size_option(*cmd, "--max-mib", o->max_mib, "Largest transfer in MiB", 1, 8192,
                  size_t{1} << 20);
  cmd->add_option("--iters", o->iters, "Repetitions at 4 MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  add_size_option(*cmd, "--chunk-bytes", o->chunk_bytes, "Staged path: bounce buffer bytes", 4096,
                  size_t{1} << 30);
  cmd->add_option("--bounce-buffers", o->bounce_buffers, "Staged path: buffers per direction")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1024}));
  cmd->add_option("--depth", o->depth,
                  "Requests kept in flight (and copies, for the ceilings); 1: one at a time")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--cuda-streams", o->cuda_streams, "CUDA streams per device (initiator)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{64}));
  cmd->add_flag("--polling", o->polling,
                "The initiator's agent has no progress thread: requests poll the backends");
  cmd->add_option("--lat-iters", o->lat_iters, "Latency section: timed runs per size")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_flag("--json", o->json,
                "One JSON document on stdout: machine, versions, options, every row with its "
                "ceiling and target, the verdict");
  cmd->add_flag("--check", o->check, "Exit 1 when a row's ratio is below its target");
  cmd->add_option("--target", o->target, "internal: serve as the peer process")
      ->check(CLI::IsMember({"ipc", "staged"}))
      ->group("");
  cmd->callback([o, &runner] { runner = [o] { return run_bench_gpu(*o); }; });
}

}  // namespace kvbm::tools
