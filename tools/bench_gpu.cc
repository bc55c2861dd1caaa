// `kvbm bench gpu`: GPU memory through the agent, each figure as a ratio to a ceiling
// measured in the same run:
//   ipc      VRAM -> VRAM of another process (CUDA IPC)   vs  cudaMemcpy device->device of
//                                                            the same size, one at a time
//   h2d/d2h  pinned DRAM <-> VRAM within the agent          vs  one large cudaMemcpy
//   staged   VRAM -> VRAM of another process, staged over UCX (forced)
//                                                        vs  the agent's DRAM -> DRAM
// The peers are this program again (`kvbm bench gpu --target ipc|staged`), started before
// this process touches CUDA. Without a GPU it prints why and exits 0.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {

#if !KVBM_HAVE_CUDA

int run_bench_gpu(const BenchGpuOptions&) {
  std::cout << "bench gpu: skipped (kvbm was built without CUDA)\n";
  return 0;
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
class Target {
 public:
  Target(const BenchGpuOptions& o, const std::string& mode) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) {
      error_ = "pipe failed";
      return;
    }
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      const std::string max = std::to_string(o.max_mib), chunk = std::to_string(o.chunk_bytes),
                        bufs = std::to_string(o.bounce_buffers);
      execl("/proc/self/exe", "kvbm", "bench", "gpu", "--target", mode.c_str(), "--max-mib",
            max.c_str(), "--chunk-bytes", chunk.c_str(), "--bounce-buffers", bufs.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = in[1];
    from_ = fdopen(out[0], "r");
    char line[512] = {};
    if (pid_ < 0 || from_ == nullptr || fgets(line, sizeof line, from_) == nullptr) {
      error_ = "target process did not answer";
      return;
    }
    std::istringstream s(line);
    std::string word;
    s >> word >> port_ >> vram_ >> dram_;
    if (word != "READY") error_ = std::string("target process: ") + line;
  }
  ~Target() {
    if (to_ >= 0) close(to_);  // the target exits at end of input
    if (from_ != nullptr) fclose(from_);
    if (pid_ > 0) {
      int status = 0;
      for (int i = 0; i < 500 && waitpid(pid_, &status, WNOHANG) == 0; ++i)
        std::this_thread::sleep_for(10ms);
      if (waitpid(pid_, &status, WNOHANG) == 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
      }
    }
  }
  const std::string& error() const { return error_; }
  uint16_t port() const { return port_; }
  uint64_t vram() const { return vram_; }
  uint64_t dram() const { return dram_; }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  FILE* from_ = nullptr;
  uint16_t port_ = 0;
  uint64_t vram_ = 0, dram_ = 0;
  std::string error_;
};

// Bandwidth of `iters` back-to-back runs of one prepared request (after 2 warm-ups),
// spinning on its state so that the measurement adds no wake-up latency.
Result<double> time_request(xfer::Agent& a, xfer::Op op, const xfer::DescList& l,
                            const xfer::DescList& r, const std::string& peer, int iters) {
  auto req = a.create_request(op, l, r, peer);
  if (!req) return req.error();
  auto once = [&]() -> Status {
    KVBM_TRY((*req)->post());
    for (;;) {
      auto s = (*req)->state();
      if (s == xfer::XferState::Done) return {};
      if (s == xfer::XferState::Error) return (*req)->error();
    }
  };
  for (int i = 0; i < 2; ++i) KVBM_TRY(once());
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) KVBM_TRY(once());
  return gbps(l.descs[0].len * iters, Clock::now() - t0);
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

std::string ratio(double v, double ceiling) {
  return ceiling > 0 ? fixed(v / ceiling, 2) : "-";
}

}  // namespace

int run_bench_gpu(const BenchGpuOptions& o) {
  if (!o.target.empty()) return serve_target(o);
  // Peers first: they must start before this process initializes CUDA.
  Target ipc(o, "ipc");
  Target staged(o, "staged");
  auto gpus = cuda_device_count();
  if (!gpus) {
    std::cout << "bench gpu: skipped (" << gpus.error().to_string() << ")\n";
    return 0;
  }
  for (const Target* t : {&ipc, &staged}) {
    if (!t->error().empty()) {
      std::cerr << "bench gpu: " << t->error() << "\n";
      return 1;
    }
  }
  // Agents first: storages registered with them are destroyed (deregistered) before them.
  auto agent = xfer::Agent::create("bench");
  xfer::AgentConfig staged_config;
  staged_config.add_cuda_if_gpu = false;
  auto stager = xfer::Agent::create("bench-stager", staged_config);
  if (!agent || !stager) {
    std::cerr << "bench gpu: " << (agent ? stager.error() : agent.error()).to_string() << "\n";
    return 1;
  }
  if (auto st = (*stager)->create_backend("CUDA", staged_params(o)); !st) {
    std::cerr << "bench gpu: " << st.error().to_string() << "\n";
    return 1;
  }
  const size_t max = o.max_mib << 20;
  auto a = DeviceAllocator(0).allocate(max);
  auto b = DeviceAllocator(0).allocate(max);
  auto pinned = PinnedAllocator().allocate(max);
  auto host = SystemAllocator().allocate(max);
  if (!a || !b || !pinned || !host) {
    std::cerr << "bench gpu: allocation of " << human_bytes(max) << " buffers failed\n";
    return 1;
  }
  // The stager's VRAM is a sub-range of `a` registered separately; `b` and the host
  // buffers belong to the main agent.
  for (auto* s : std::initializer_list<RegisterableStorage*>{&*a, &*b, &*pinned}) {
    if (auto st = register_with_agent(*s, **agent); !st) {
      std::cerr << "bench gpu: " << st.error().to_string() << "\n";
      return 1;
    }
  }
  auto stager_vram =
      (*stager)->register_memory(xfer::DescList(xfer::MemType::Vram, {{a->addr(), max, 0}}));
  auto stager_dram =
      (*stager)->register_memory(xfer::DescList(xfer::MemType::Dram, {{host->addr(), max, 0}}));
  auto ipc_name = (*agent)->fetch_remote_metadata("127.0.0.1", ipc.port());
  auto staged_name = (*stager)->fetch_remote_metadata("127.0.0.1", staged.port());
  if (!stager_vram || !stager_dram || !ipc_name || !staged_name) {
    std::cerr << "bench gpu: setup failed\n";
    return 1;
  }

  using xfer::DescList;
  using xfer::MemType;
  using xfer::Op;
  const int iters = o.iters;
  Table t({"path", "size", "GB/s", "ceiling", "ceiling GB/s", "ratio", "target"});
  bool failed = false;
  auto report = [&](const std::string& path, size_t n, Result<double> v, const std::string& ceil,
                    double c, double target) {
    if (!v) {
      t.add({path, human_bytes(n), "ERR", ceil, fixed(c), "-", v.error().to_string()});
      failed = true;
      return;
    }
    t.add(
        {path, human_bytes(n), fixed(*v), ceil, fixed(c), ratio(*v, c), ">= " + fixed(target, 2)});
  };

  const double h2d_ceiling = time_memcpy(a->data(), pinned->data(), max, 3);
  const double d2h_ceiling = time_memcpy(pinned->data(), a->data(), max, 3);
  for (size_t mib = 1; mib <= o.max_mib; mib *= 4) {
    const size_t n = mib << 20;
    const int it = std::max(3, static_cast<int>(iters * 64 / std::max<size_t>(mib, 1) / 16));
    const double d2d = time_memcpy(b->data(), a->data(), n, it);
    report("ipc vram->vram", n,
           time_request(**agent, Op::Write, DescList(MemType::Vram, {{a->addr(), n, 0}}),
                        DescList(MemType::Vram, {{ipc.vram(), n, 0}}), *ipc_name, it),
           "cudaMemcpy d2d", d2d, 0.85);
    report("h2d pinned->vram", n,
           time_request(**agent, Op::Read, DescList(MemType::Vram, {{a->addr(), n, 0}}),
                        DescList(MemType::Dram, {{pinned->addr(), n, 0}}), "bench", it),
           "1 large h2d", h2d_ceiling, 0.9);
    report("d2h vram->pinned", n,
           time_request(**agent, Op::Write, DescList(MemType::Vram, {{a->addr(), n, 0}}),
                        DescList(MemType::Dram, {{pinned->addr(), n, 0}}), "bench", it),
           "1 large d2h", d2h_ceiling, 0.9);
    auto dram = time_request(**stager, Op::Write, DescList(MemType::Dram, {{host->addr(), n, 0}}),
                             DescList(MemType::Dram, {{staged.dram(), n, 0}}), *staged_name, it);
    report("staged vram->vram", n,
           time_request(**stager, Op::Write, DescList(MemType::Vram, {{a->addr(), n, 0}}),
                        DescList(MemType::Vram, {{staged.vram(), n, 0}}), *staged_name, it),
           "agent dram->dram", dram ? *dram : 0, 0.8);
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::cout << "GPU 0: " << prop.name << "; staged chunk " << human_bytes(o.chunk_bytes) << " x "
            << o.bounce_buffers
            << " bounce buffers; UCX_TLS=" << (getenv("UCX_TLS") ? getenv("UCX_TLS") : "(default)")
            << "\n";
  t.print(std::cout);
  return failed ? 1 : 0;
}

#endif

}  // namespace kvbm::tools
