// `kvbm demo`: the main job. Allocates storage on every tier this machine has, writes a
// known pattern through it, reads it back, verifies every byte, and prints a table.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>

#include "commands.h"
#include "common/pattern.h"
#include "kvbm/storage.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct TierResult {
  std::string tier;
  std::string detail;
  double write_gbps = 0;
  double read_gbps = 0;
  std::string outcome;  // "ok", "CORRUPT at byte N", or why the tier is unavailable
  bool failed = false;
};

double gbps(size_t bytes, Clock::duration d) {
  double s = std::chrono::duration<double>(d).count();
  return s > 0 ? bytes / s / 1e9 : 0;
}

// Times `write` then `read`, then checks `check` (the staging buffer after the read).
TierResult exercise(std::string tier, std::string detail, size_t bytes,
                    const std::function<Status()>& write, const std::function<Status()>& read,
                    const void* check) {
  TierResult r;
  r.tier = std::move(tier);
  r.detail = std::move(detail);
  auto t0 = Clock::now();
  Status w = write();
  auto t1 = Clock::now();
  Status rd = w ? read() : w;
  auto t2 = Clock::now();
  if (!rd) {
    r.outcome = rd.error().to_string();
    r.failed = true;
    return r;
  }
  r.write_gbps = gbps(bytes, t1 - t0);
  r.read_gbps = gbps(bytes, t2 - t1);
  size_t bad = detail::find_pattern_mismatch(check, bytes, 42);
  r.failed = bad != SIZE_MAX;
  r.outcome = r.failed ? "CORRUPT at byte " + std::to_string(bad) : "ok";
  return r;
}

TierResult unavailable(std::string tier, const Error& e) {
  TierResult r;
  r.tier = std::move(tier);
  r.outcome = "unavailable";
  r.detail = e.to_string();
  return r;
}

// Host tiers: memcpy from a staging buffer into the storage and back out.
template <typename S>
TierResult host_tier(const char* name, Result<S> storage) {
  if (!storage) return unavailable(name, storage.error());
  S& s = *storage;
  auto staging = SystemAllocator().allocate(s.size());
  if (!staging) return unavailable(name, staging.error());
  detail::fill_pattern(staging->data(), s.size(), 42);
  std::memset(s.data(), 0, s.size());  // fault the pages in before timing
  return exercise(
      name, "memcpy in and out", s.size(),
      [&]() -> Status {
        std::memcpy(s.data(), staging->data(), s.size());
        return {};
      },
      [&]() -> Status {
        std::memset(staging->data(), 0, s.size());
        std::memcpy(staging->data(), s.data(), s.size());
        return {};
      },
      staging->data());
}

#if KVBM_HAVE_CUDA
TierResult device_tier(size_t bytes) {
  auto dev = DeviceAllocator(0).allocate(bytes);
  if (!dev) return unavailable("Device", dev.error());
  auto staging = PinnedAllocator().allocate(bytes);
  if (!staging) return unavailable("Device", staging.error());
  detail::fill_pattern(staging->data(), bytes, 42);
  auto copy = [](void* dst, const void* src, size_t n, cudaMemcpyKind kind) -> Status {
    if (cudaError_t e = cudaMemcpy(dst, src, n, kind); e != cudaSuccess) {
      return err(ErrorCode::Internal, "cudaMemcpy: ", cudaGetErrorString(e));
    }
    return {};
  };
  return exercise(
      "Device", "GPU 0, via pinned staging", bytes,
      [&] { return copy(dev->data(), staging->data(), bytes, cudaMemcpyHostToDevice); },
      [&] {
        std::memset(staging->data(), 0, bytes);
        return copy(staging->data(), dev->data(), bytes, cudaMemcpyDeviceToHost);
      },
      staging->data());
}
#else
TierResult device_tier(size_t) {
  return unavailable("Device", cuda_device_count().error());
}
#endif

TierResult disk_tier(const std::filesystem::path& dir, size_t bytes) {
  auto disk = DiskAllocator(dir).allocate(bytes);
  if (!disk) return unavailable("Disk", disk.error());
  auto staging = SystemAllocator().allocate(bytes);
  if (!staging) return unavailable("Disk", staging.error());
  detail::fill_pattern(staging->data(), bytes, 42);
  const int fd = disk->fd();
  auto io = [&](bool write) -> Status {
    auto* p = static_cast<char*>(staging->data());
    for (size_t done = 0; done < bytes;) {
      ssize_t n = write ? pwrite(fd, p + done, bytes - done, done)
                        : pread(fd, p + done, bytes - done, done);
      if (n <= 0)
        return err(ErrorCode::Io, write ? "pwrite" : "pread", " at offset ", done, ": ",
                   std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    return write ? (fdatasync(fd) == 0 ? Status{} : Status{err(ErrorCode::Io, "fdatasync")})
                 : Status{};
  };
  return exercise(
      "Disk", disk->path().string() + (disk->direct_io() ? " (O_DIRECT)" : " (buffered)"), bytes,
      [&] { return io(true); },
      [&] {
        std::memset(staging->data(), 0, bytes);
        return io(false);
      },
      staging->data());
}

}  // namespace

int run_demo(const DemoOptions& options) {
  std::filesystem::path dir = options.dir;
  std::filesystem::path made;
  if (dir.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvbm-demo-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::cerr << "kvbm demo: cannot make a temp dir: " << std::strerror(errno) << "\n";
      return 1;
    }
    dir = made = tmpl;
  }
  const size_t bytes = options.bytes;
  std::cout << "kvbm demo: " << bytes / (1 << 20) << " MiB through every tier (disk in "
            << dir.string() << ")\n\n";

  std::vector<TierResult> results;
  results.push_back(host_tier("System", SystemAllocator().allocate(bytes)));
  results.push_back(host_tier("Pinned", PinnedAllocator().allocate(bytes)));
  results.push_back(device_tier(bytes));
  results.push_back(disk_tier(dir, bytes));

  Table t({"tier", "write GB/s", "read GB/s", "result", "detail"});
  bool failed = false;
  for (const auto& r : results) {
    bool ran = r.outcome != "unavailable";
    t.add({r.tier, ran ? fixed(r.write_gbps, 2) : "-", ran ? fixed(r.read_gbps, 2) : "-", r.outcome,
           r.detail});
    failed |= r.failed;
  }
  t.print(std::cout);
  if (!made.empty()) std::filesystem::remove_all(made);
  std::cout << "\n"
            << (failed ? "FAILED: a tier lost or corrupted bytes" : "all available tiers verified")
            << "\n";
  return failed ? 1 : 0;
}

}  // namespace kvbm::tools
