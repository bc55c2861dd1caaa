#include "demo_ceilings.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "common/task_pool.h"
#include "common/uring_batch.h"
#include "copy/stream_copy.h"
#include "kvbm/storage.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools::demo {

using Clock = std::chrono::steady_clock;

Result<double> best_gbps(size_t bytes, int reps, const std::function<Status()>& fn) {
  double best = 0;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    KVBM_TRY(fn());
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0) best = std::max(best, static_cast<double>(bytes) / s / 1e9);
  }
  return best;
}

namespace {

struct Variant {
  std::string name;
  std::function<Status()> run;
};

// The fastest of several ways to do the same copy, named.
Result<Ceiling> best_variant(size_t bytes, int reps, const std::vector<Variant>& variants) {
  Ceiling best;
  for (const Variant& v : variants) {
    auto g = best_gbps(bytes, reps, v.run);
    if (!g) return g.error();
    if (*g > best.gbps) best = Ceiling{*g, v.name};
  }
  return best;
}

}  // namespace

Result<Ceiling> host_copy_ceiling(size_t bytes, size_t threads, int reps) {
  auto a = SystemAllocator().allocate(bytes);
  if (!a) return a.error();
  auto b = SystemAllocator().allocate(bytes);
  if (!b) return b.error();
  std::memset(a->data(), 1, bytes);  // fault every page in before timing
  std::memset(b->data(), 0, bytes);
  threads = std::max<size_t>(1, threads);
  // On threads started once, as the host path's are: starting 16 threads per copy cost
  // about as long as copying 64 MiB, and the engine came out at 1.4x its "ceiling".
  detail::TaskPool pool(threads - 1);
  // One memcpy per thread, 1 MiB memcpys that the threads take in turn (glibc uses
  // non-temporal stores for huge calls, slower on some machines), or 1 MiB copies with
  // streaming stores (no read for ownership of the destination: what the host path does
  // for large jobs, and what a copy much larger than the caches is bound by).
  auto copy = [&](size_t piece, bool streaming) -> Status {
    const size_t n = piece == 0 ? threads : (bytes + piece - 1) / piece;
    pool.run(n, [&](size_t i) {
      const size_t lo = bytes * i / n, hi = bytes * (i + 1) / n;
      char* dst = static_cast<char*>(b->data()) + lo;
      const char* src = static_cast<const char*>(a->data()) + lo;
      if (streaming) {
        detail::stream_copy(dst, src, hi - lo);
        detail::stream_fence();
      } else {
        std::memcpy(dst, src, hi - lo);
      }
    });
    return {};
  };
  const std::string on = std::to_string(threads) + " thread" + (threads > 1 ? "s" : "");
  constexpr size_t kMiB = 1 << 20;
  return best_variant(bytes, reps,
                      {{"memcpy, " + on, [&] { return copy(0, false); }},
                       {"1 MiB memcpys, " + on, [&] { return copy(kMiB, false); }},
                       {"1 MiB streaming-store copies, " + on, [&] { return copy(kMiB, true); }}});
}

Result<CudaCeilings> cuda_ceilings(size_t bytes, int reps) {
#if KVBM_HAVE_CUDA
  auto host = PinnedAllocator().allocate(bytes);
  if (!host) return host.error();
  auto dev = DeviceAllocator(0).allocate(bytes);
  if (!dev) return dev.error();
  std::memset(host->data(), 1, bytes);
  auto copy = [&](bool to_device) -> Status {
    void* d = reinterpret_cast<void*>(dev->addr());
    cudaError_t e = to_device ? cudaMemcpy(d, host->data(), bytes, cudaMemcpyHostToDevice)
                              : cudaMemcpy(host->data(), d, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return err(ErrorCode::Internal, "cudaMemcpy: ", cudaGetErrorString(e));
    return {};
  };
  KVBM_TRY(copy(true));  // warm-up: first touch, context
  auto h2d = best_gbps(bytes, reps, [&] { return copy(true); });
  if (!h2d) return h2d.error();
  auto d2h = best_gbps(bytes, reps, [&] { return copy(false); });
  if (!d2h) return d2h.error();
  const std::string what = "one " + human_bytes(bytes) + " cudaMemcpy ";
  return CudaCeilings{{*d2h, what + "D2H"}, {*h2d, what + "H2D"}};
#else
  (void)bytes;
  (void)reps;
  return err(ErrorCode::DeviceUnavailable, "kvbm was built without CUDA");
#endif
}

Result<DiskCeilings> disk_ceilings(const std::filesystem::path& dir, size_t bytes, int reps) {
  auto file = DiskAllocator(dir).allocate(bytes);
  if (!file) return file.error();
  // Read and written by fd: no name to leave behind.
  KVBM_TRY(file->unlink());
  auto buf = SystemAllocator().allocate(bytes);  // page-aligned, as O_DIRECT needs
  if (!buf) return buf.error();
  std::memset(buf->data(), 1, bytes);
  const int fd = file->fd();
  auto io = [&](bool write) -> Status {
    auto* p = static_cast<char*>(buf->data());
    for (size_t done = 0; done < bytes;) {
      const off_t at = static_cast<off_t>(done);
      ssize_t n =
          write ? pwrite(fd, p + done, bytes - done, at) : pread(fd, p + done, bytes - done, at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return err(ErrorCode::Io, write ? "pwrite" : "pread", " of ", file->path().string(),
                   " at offset ", done, ": ", n == 0 ? "end of file" : std::strerror(errno));
      }
      done += static_cast<size_t>(n);
    }
    return {};
  };
  // Or 1 MiB sequential ops through one io_uring, 64 in flight (as deep as the File path);
  // and the same with the buffer as a fixed buffer of the ring (as the engine's registered
  // host layouts are), where the kernel allows it.
  auto ring = detail::UringBatch::create(64);
  if (!ring) return ring.error();
  auto fixed_ring = detail::UringBatch::create(64);
  if (!fixed_ring) return fixed_ring.error();
  const bool fixed = (*fixed_ring)->add_fixed(buf->data(), bytes);
  auto uring = [&](detail::UringBatch& b, bool write) -> Status {
    std::vector<detail::FileOp> ops;
    for (size_t at = 0; at < bytes; at += size_t{1} << 20) {
      ops.push_back({write ? detail::FileOp::Kind::Write : detail::FileOp::Kind::Read, fd, at,
                     static_cast<char*>(buf->data()) + at, std::min(size_t{1} << 20, bytes - at)});
    }
    return b.run(ops);
  };
  const std::string how = file->direct_io() ? " (O_DIRECT)" : " (buffered)";
  const std::string one = "one " + human_bytes(bytes);
  std::vector<Variant> writes = {
      {one + " pwrite" + how, [&] { return io(true); }},
      {"io_uring 1 MiB writes, QD 64" + how, [&] { return uring(**ring, true); }}};
  std::vector<Variant> reads = {
      {one + " pread" + how, [&] { return io(false); }},
      {"io_uring 1 MiB reads, QD 64" + how, [&] { return uring(**ring, false); }}};
  if (fixed) {
    writes.push_back({"io_uring 1 MiB writes, QD 64, fixed buffer" + how,
                      [&] { return uring(**fixed_ring, true); }});
    reads.push_back({"io_uring 1 MiB reads, QD 64, fixed buffer" + how,
                     [&] { return uring(**fixed_ring, false); }});
  }
  auto w = best_variant(bytes, reps, writes);
  if (!w) return w.error();
  auto r = best_variant(bytes, reps, reads);
  if (!r) return r.error();
  (*ring)->forget_fd(fd);
  (*fixed_ring)->forget_fd(fd);
  if (fixed) (*fixed_ring)->remove_fixed(buf->data());
  return DiskCeilings{*w, *r};
}

Result<Ceiling> remote_ceiling(xfer::Agent& agent, const std::string& peer, uint64_t remote_addr,
                               size_t bytes, int reps) {
  auto buf = SystemAllocator().allocate(bytes);
  if (!buf) return buf.error();
  std::memset(buf->data(), 0, bytes);
  KVBM_TRY(agent.register_storage(*buf));
  auto req = agent.create_request(
      xfer::Op::Write, xfer::DescList(xfer::MemType::Dram, {{buf->addr(), bytes, 0}}),
      xfer::DescList(xfer::MemType::Dram, {{remote_addr, bytes, 0}}), peer);
  if (!req) return req.error();
  auto once = [&]() -> Status {
    KVBM_TRY((*req)->post());
    return (*req)->wait(std::chrono::minutes(2));
  };
  KVBM_TRY(once());  // warm-up: connection set-up
  auto g = best_gbps(bytes, reps, once);
  if (!g) return g.error();
  return Ceiling{*g, "one " + human_bytes(bytes) + " agent WRITE, 1 descriptor"};
}

}  // namespace kvbm::tools::demo
