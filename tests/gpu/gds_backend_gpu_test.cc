// Files <-> GPU memory through the GDS backend: the cuFile path (when libcufile opens,
// possibly in compat mode) and the forced pinned-bounce path. GPU tests skip without a GPU.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kvbm/cuda.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/test_support.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::fill_pattern;
using testing::find_pattern_mismatch;
using testing::LogCapture;
using testing::TempDir;

std::unique_ptr<Agent> make_agent() {
  auto a = Agent::create("gds", AgentConfig{.backends = {"POSIX"}});
  EXPECT_TRUE(a) << a.error().to_string();
  return a ? std::move(*a) : nullptr;
}

TEST(GdsBackend, ParamsAndNoGpu) {
  auto a = make_agent();
  if (!built_with_cuda()) {
    EXPECT_ERROR(a->create_backend("GDS"), ErrorCode::DeviceUnavailable, "built without CUDA");
    return;
  }
  EXPECT_ERROR(a->create_backend("GDS", {{"mode", "magic"}}), ErrorCode::InvalidArgument,
               "'magic'");
  EXPECT_ERROR(a->create_backend("GDS", {{"queue_depth", "0"}}), ErrorCode::InvalidArgument,
               "queue_depth 0");
  EXPECT_ERROR(a->create_backend("GDS", {{"bounce_bytes", "100"}}), ErrorCode::InvalidArgument,
               "bounce_bytes 100");
  EXPECT_ERROR(a->create_backend("GDS", {{"cufile_threads", "0"}}), ErrorCode::InvalidArgument,
               "cufile_threads 0");
  EXPECT_ERROR(a->create_backend("GDS", {{"cufile_threads", "65"}}), ErrorCode::InvalidArgument,
               "cufile_threads 65");
  EXPECT_ERROR(a->create_backend("GDS", {{"nope", "1"}}), ErrorCode::InvalidArgument, "'nope'");
  EXPECT_ERROR(a->create_backend("GDS", {{"nope", "1"}}), ErrorCode::InvalidArgument,
               "cufile_threads)");
  if (cuda_device_count()) GTEST_SKIP() << "a GPU is present: the no-GPU error is not reachable";
  EXPECT_ERROR(a->create_backend("GDS"), ErrorCode::DeviceUnavailable, "GDS backend");
  EXPECT_ERROR(a->create_backend("GDS", {{"mode", "bounce"}}), ErrorCode::DeviceUnavailable,
               "needs a GPU");
}

#if KVBM_HAVE_CUDA

// scripts/device-test sets KVBM_REQUIRE_CUFILE=1 when it runs these tests in a file system
// it made for cuFile: there a cuFile path that does not run is a failure, not a skip.
bool cufile_required() {
  return std::getenv("KVBM_REQUIRE_CUFILE") != nullptr;
}
#define SKIP_CUFILE(why)                  \
  do {                                    \
    if (cufile_required()) FAIL() << why; \
    GTEST_SKIP() << why;                  \
  } while (0)

DescList vram(uint64_t addr, uint64_t len) {
  return DescList(MemType::Vram, {Desc{addr, len, 0}});
}
DescList file(int fd, uint64_t off, uint64_t len) {
  return DescList(MemType::File, {Desc{off, len, static_cast<uint64_t>(fd)}});
}
Status transfer(Agent& a, Op op, const DescList& l, const DescList& r) {
  auto req = a.create_request(op, l, r, a.name());
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(30s);
}

// VRAM -> FILE -> VRAM at many sizes and unaligned offsets, checked byte for byte.
void round_trip(const BackendParams& params, const char* expect_path) {
  KVBM_REQUIRE_GPU();
  TempDir dir;
  auto a = make_agent();
  LogCapture logs;
  auto st = a->create_backend("GDS", params);
  if (!st && params.count("mode") && params.at("mode") == "cufile" &&
      st.code() == ErrorCode::Unsupported) {
    SKIP_CUFILE("cuFile unavailable: " << st.error().message);
  }
  ASSERT_TRUE(st) << st.error().to_string();
  std::string path_line;
  for (const auto& l : logs.lines()) {
    if (l.find("GDS backend") != std::string::npos) path_line = l;
  }
  std::cout << "[ GDS path ] " << path_line << "\n";
  if (expect_path) {
    EXPECT_NE(path_line.find(expect_path), std::string::npos) << path_line;
  }

  const size_t size = 32 << 20;
  auto disk = DiskStorage::allocate(size, dir.path());
  auto dev = DeviceStorage::allocate(size);
  ASSERT_TRUE(disk && dev);
  auto reg = register_with_agent(*disk, *a);
  if (!reg && expect_path != nullptr && std::string(expect_path) == "cuFile") {
    // mode=cufile refuses a file system cuFile does not take; mode=auto bounces it instead.
    ASSERT_EQ(reg.code(), ErrorCode::RegistrationFailed) << reg.error().to_string();
    SKIP_CUFILE("cuFile does not take files in " << dir.path() << ": " << reg.error().message);
  }
  ASSERT_TRUE(reg) << reg.error().to_string();
  auto dev_reg = register_with_agent(*dev, *a);
  ASSERT_TRUE(dev_reg) << dev_reg.error().to_string();
  std::vector<char> host(size), back(size);
  const int fd = disk->fd();
  const std::vector<uint64_t> sizes = {1, 4096, 4097, 1 << 20, (20 << 20) + 5};
  const std::vector<uint64_t> skews = {0, 3, 4096};
  uint64_t seed = 1;
  for (uint64_t n : sizes) {
    for (uint64_t skew : skews) {
      const uint64_t foff = skew * 7, doff = skew;
      fill_pattern(host.data(), n, seed);
      ASSERT_EQ(cudaMemcpy(reinterpret_cast<void*>(dev->addr() + doff), host.data(), n,
                           cudaMemcpyHostToDevice),
                cudaSuccess);
      ASSERT_TRUE(transfer(*a, Op::Write, vram(dev->addr() + doff, n), file(fd, foff, n)));
      ASSERT_EQ(cudaMemset(reinterpret_cast<void*>(dev->addr()), 0, size), cudaSuccess);
      auto r = transfer(*a, Op::Read, vram(dev->addr() + doff, n), file(fd, foff, n));
      ASSERT_TRUE(r) << r.error().to_string();
      ASSERT_EQ(cudaMemcpy(back.data(), reinterpret_cast<void*>(dev->addr() + doff), n,
                           cudaMemcpyDeviceToHost),
                cudaSuccess);
      EXPECT_EQ(find_pattern_mismatch(back.data(), n, seed), SIZE_MAX)
          << "size " << n << " skew " << skew;
      ++seed;
    }
  }
  // The file as the local side: READ pulls VRAM into it.
  fill_pattern(host.data(), 8192, 77);
  ASSERT_EQ(
      cudaMemcpy(reinterpret_cast<void*>(dev->addr()), host.data(), 8192, cudaMemcpyHostToDevice),
      cudaSuccess);
  ASSERT_TRUE(transfer(*a, Op::Read, file(fd, 4096, 8192), vram(dev->addr(), 8192)));
  auto h = SystemAllocator().allocate(8192);
  ASSERT_TRUE(h);
  ASSERT_EQ(::pread(fd, h->data(), 8192, 4096), 8192);
  EXPECT_EQ(find_pattern_mismatch(h->data(), 8192, 77), SIZE_MAX);
}

TEST(GdsBackendGpu, RoundTripAuto) {
  round_trip({}, nullptr);
}
TEST(GdsBackendGpu, RoundTripCuFile) {
  round_trip({{"mode", "cufile"}}, "cuFile");
}
TEST(GdsBackendGpu, RoundTripForcedBounce) {
  round_trip({{"mode", "bounce"}, {"bounce_bytes", "1048576"}}, "bounce");
}

// Each test through the bounce path and through cuFile (in its own threads, in slices).
class GdsPath : public ::testing::TestWithParam<std::string> {
 protected:
  // The agent with a GDS backend in this test's mode; null after a skip or failure.
  std::unique_ptr<Agent> agent_in_mode() {
    auto a = make_agent();
    auto st = a->create_backend("GDS", {{"mode", GetParam()}});
    if (!st && st.code() == ErrorCode::Unsupported) {
      if (cufile_required()) ADD_FAILURE() << st.error().message;
      return nullptr;
    }
    EXPECT_TRUE(st) << st.error().to_string();
    return st ? std::move(a) : nullptr;
  }
  // The FILE region [0, len) of fd, registered; an empty registration after a skip.
  std::unique_ptr<MemoryRegistration> register_file(Agent& a, int fd, uint64_t len) {
    auto reg = a.register_memory(file(fd, 0, len));
    if (!reg && GetParam() == "cufile") {
      if (cufile_required()) ADD_FAILURE() << reg.error().message;
      return nullptr;
    }
    EXPECT_TRUE(reg) << reg.error().to_string();
    return reg ? std::move(*reg) : nullptr;
  }
};

// A read past the end of the file fails with the file's offset (cuFileRead returns 0 there).
TEST_P(GdsPath, ReadPastEndOfFileIsAnError) {
  KVBM_REQUIRE_GPU();
  TempDir dir;
  auto a = agent_in_mode();
  if (!a) GTEST_SKIP() << "no cuFile here";
  auto dev = DeviceStorage::allocate(1 << 20);
  ASSERT_TRUE(dev && register_with_agent(*dev, *a));
  const int fd = ::open((dir.path() / "short").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  auto reg = register_file(*a, fd, 1 << 20);
  if (!reg) {
    ::close(fd);
    GTEST_SKIP() << "cuFile does not take files in " << dir.path();
  }
  EXPECT_ERROR(transfer(*a, Op::Read, vram(dev->addr(), 65536), file(fd, 0, 65536)), ErrorCode::Io,
               "read past end of file at offset 4096");
  reg.reset();
  ::close(fd);
}

// Requests posted together share one io_uring run in the bounce path; each still gets
// its own outcome: one read past the end fails alone, the others deliver their bytes.
TEST_P(GdsPath, RequestsInFlightTogetherGetTheirOwnOutcome) {
  KVBM_REQUIRE_GPU();
  TempDir dir;
  auto a = agent_in_mode();
  if (!a) GTEST_SKIP() << "no cuFile here";
  constexpr uint64_t kReq = 256 << 10, kCount = 16;
  auto dev = DeviceStorage::allocate(kReq * kCount);
  ASSERT_TRUE(dev && register_with_agent(*dev, *a));
  const int fd = ::open((dir.path() / "blocks").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  std::vector<char> host(kReq * kCount);
  for (uint64_t i = 0; i < kCount; ++i) fill_pattern(host.data() + i * kReq, kReq, 100 + i);
  // The file holds blocks 0..kCount-2; the last block's range lies past its end.
  ASSERT_EQ(::pwrite(fd, host.data(), kReq * (kCount - 1), 0),
            static_cast<ssize_t>(kReq * (kCount - 1)));
  auto reg = register_file(*a, fd, kReq * kCount);
  if (!reg) {
    ::close(fd);
    GTEST_SKIP() << "cuFile does not take files in " << dir.path();
  }
  std::vector<std::unique_ptr<Request>> reqs;
  for (uint64_t i = 0; i < kCount; ++i) {
    auto r = a->create_request(Op::Read, vram(dev->addr() + i * kReq, kReq),
                               file(fd, i * kReq, kReq), a->name());
    ASSERT_TRUE(r) << r.error().to_string();
    reqs.push_back(std::move(*r));
  }
  for (auto& r : reqs) ASSERT_TRUE(r->post());
  for (uint64_t i = 0; i < kCount; ++i) {
    auto st = reqs[i]->wait(30s);
    if (i == kCount - 1) {
      EXPECT_ERROR(st, ErrorCode::Io, "read past end of file");
    } else {
      EXPECT_TRUE(st) << "request " << i << ": " << st.error().to_string();
    }
  }
  std::vector<char> back(kReq * kCount);
  ASSERT_EQ(cudaMemcpy(back.data(), dev->data(), back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  for (uint64_t i = 0; i + 1 < kCount; ++i) {
    EXPECT_EQ(find_pattern_mismatch(back.data() + i * kReq, kReq, 100 + i), SIZE_MAX)
        << "block " << i;
  }
  reqs.clear();
  reg.reset();
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Gds, GdsPath, ::testing::Values("bounce", "cufile"),
                         [](const auto& info) { return info.param; });

#endif  // KVBM_HAVE_CUDA

}  // namespace
}  // namespace kvbm::xfer
