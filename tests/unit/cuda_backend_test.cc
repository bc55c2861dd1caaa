// The CUDA backend's parts that need no GPU: the wire form of its connection data and of
// a VRAM region's IPC info (bytes from peers, so every malformed case is an error), its
// parameters, and how the agent behaves when there is no GPU.
#include <gtest/gtest.h>

#include <algorithm>

#include "kvbm/cuda.h"
#include "kvbm/xfer/agent.h"
#include "support/test_support.h"
#include "xfer/backend.h"
#include "xfer/backends/cuda/cuda_info.h"

namespace kvbm::xfer::detail {
namespace {

CudaRegionInfo sample_region() {
  CudaRegionInfo r;
  for (size_t i = 0; i < r.handle.size(); ++i) r.handle[i] = static_cast<char>(i * 7 + 1);
  r.alloc_base = 0x7f0000000000;
  r.alloc_size = 1 << 20;
  r.device = 3;
  r.pid = 4242;
  r.boot_id = "0e1f-boot";
  return r;
}

TEST(CudaInfo, ConnectionRoundTrips) {
  CudaConnectionInfo c{"boot-1234", 99, std::string("\0ucx\xff", 5), 1 << 20};
  auto d = CudaConnectionInfo::decode(c.encode());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->boot_id, c.boot_id);
  EXPECT_EQ(d->pid, 99);
  EXPECT_EQ(d->ucx_address, c.ucx_address);
  EXPECT_EQ(d->chunk_bytes, 1u << 20);
  // No staged path published: still valid.
  auto e = CudaConnectionInfo::decode(CudaConnectionInfo{"b", 1, ""}.encode());
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->ucx_address.empty());
}

TEST(CudaInfo, ConnectionRejectsMalformedBytes) {
  const std::string good = CudaConnectionInfo{"boot", 7, "addr", 4096}.encode();
  EXPECT_ERROR(CudaConnectionInfo::decode(""), ErrorCode::InvalidArgument, "malformed");
  EXPECT_ERROR(CudaConnectionInfo::decode("garbage!garbage!"), ErrorCode::InvalidArgument,
               "malformed");
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(CudaConnectionInfo::decode(good.substr(0, n)).ok()) << "truncated to " << n;
  }
  EXPECT_ERROR(CudaConnectionInfo::decode(good + "x"), ErrorCode::InvalidArgument, "malformed");
  std::string v2 = good;
  v2[4] = 2;  // version
  EXPECT_ERROR(CudaConnectionInfo::decode(v2), ErrorCode::InvalidArgument, "version 2");
  EXPECT_ERROR(CudaConnectionInfo::decode(CudaConnectionInfo{"", 7, "a", 4096}.encode()),
               ErrorCode::InvalidArgument, "malformed");
  // A staged path without a chunk size is unusable.
  EXPECT_ERROR(CudaConnectionInfo::decode(CudaConnectionInfo{"b", 7, "a", 0}.encode()),
               ErrorCode::InvalidArgument, "malformed");
  std::string huge = good;
  huge[16] = '\x7f';  // boot id length far beyond the bytes
  EXPECT_FALSE(CudaConnectionInfo::decode(huge).ok());
}

TEST(CudaInfo, RegionRoundTripsWithIpcHandle) {
  const CudaRegionInfo r = sample_region();
  auto d = CudaRegionInfo::decode(r.encode(), r.alloc_base + 4096, 8192);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->handle, r.handle);
  EXPECT_EQ(d->alloc_base, r.alloc_base);
  EXPECT_EQ(d->alloc_size, r.alloc_size);
  EXPECT_EQ(d->device, 3);
  EXPECT_EQ(d->pid, 4242);
  EXPECT_EQ(d->boot_id, "0e1f-boot");
  // The whole allocation, exactly.
  EXPECT_TRUE(CudaRegionInfo::decode(r.encode(), r.alloc_base, r.alloc_size).ok());
}

TEST(CudaInfo, RegionRejectsMalformedOrOutsideAllocation) {
  const CudaRegionInfo r = sample_region();
  const std::string good = r.encode();
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(CudaRegionInfo::decode(good.substr(0, n), r.alloc_base, 16).ok()) << n;
  }
  EXPECT_ERROR(CudaRegionInfo::decode(good + "x", r.alloc_base, 16), ErrorCode::InvalidArgument,
               "malformed");
  EXPECT_ERROR(CudaRegionInfo::decode("0123456789abcdef", r.alloc_base, 16),
               ErrorCode::InvalidArgument, "malformed");
  EXPECT_ERROR(CudaRegionInfo::decode(good, r.alloc_base - 1, 16), ErrorCode::InvalidArgument,
               "outside its published allocation");
  EXPECT_ERROR(CudaRegionInfo::decode(good, r.alloc_base + r.alloc_size - 8, 16),
               ErrorCode::InvalidArgument, "outside");
  EXPECT_ERROR(CudaRegionInfo::decode(good, r.alloc_base, r.alloc_size + 1),
               ErrorCode::InvalidArgument, "outside");
  EXPECT_ERROR(CudaRegionInfo::decode(good, UINT64_MAX - 4, 16), ErrorCode::InvalidArgument,
               "outside");
  CudaRegionInfo neg = r;
  neg.device = -1;
  EXPECT_ERROR(CudaRegionInfo::decode(neg.encode(), r.alloc_base, 16), ErrorCode::InvalidArgument,
               "device -1");
}

TEST(CudaBackend, ParametersAreCheckedBeforeTheGpu) {
  AgentConfig config;
  config.add_cuda_if_gpu = false;
  auto a = Agent::create("p", config);
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  if (!built_with_cuda()) {
    EXPECT_ERROR((*a)->create_backend("CUDA"), ErrorCode::NotFound, "unknown backend 'CUDA'");
    return;
  }
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"bogus", "1"}}), ErrorCode::InvalidArgument,
               "'bogus'");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"staged", "yes"}}), ErrorCode::InvalidArgument,
               "staged must be 0 or 1");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"chunk_bytes", "12"}}), ErrorCode::InvalidArgument,
               "CUDA chunk_bytes 12 must be in 4096..1073741824");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"chunk_bytes", "4k"}}), ErrorCode::InvalidArgument,
               "chunk_bytes '4k' is not a number");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"bounce_buffers", "0"}}), ErrorCode::InvalidArgument,
               "bounce_buffers 0 must be in 1..1024");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"streams", "0"}}), ErrorCode::InvalidArgument,
               "streams 0 must be in 1..64");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"streams", "65"}}), ErrorCode::InvalidArgument,
               "streams 65 must be in 1..64");
  EXPECT_ERROR((*a)->create_backend("CUDA", {{"batch", "2"}}), ErrorCode::InvalidArgument,
               "CUDA batch 2 must be in 0..1");
}

TEST(CudaBackend, WithoutGpuCreationIsDeviceUnavailable) {
  if (!built_with_cuda()) GTEST_SKIP() << "built without CUDA";
  if (cuda_device_count().ok()) GTEST_SKIP() << "a GPU is present (tests/gpu covers it)";
  BackendEnv env;
  env.agent_name = "x";
  EXPECT_ERROR(make_backend("CUDA", env, {}), ErrorCode::DeviceUnavailable, "GPU");
  EXPECT_NE(std::find(known_backends().begin(), known_backends().end(), "CUDA"),
            known_backends().end());
  // Listed explicitly, its absence is the agent's error; left to the default, it is skipped.
  AgentConfig explicit_cuda;
  explicit_cuda.backends = {"UCX", "CUDA"};
  EXPECT_ERROR(Agent::create("e", explicit_cuda), ErrorCode::DeviceUnavailable, "GPU");
  auto a = Agent::create("d");
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_EQ((*a)->backends(), (std::vector<std::string>{"UCX", "POSIX"}));
}

TEST(CudaBackend, AgentAddsCudaWhenAGpuIsPresent) {
  KVBM_REQUIRE_GPU();
  auto a = Agent::create("g");
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_EQ((*a)->backends(), (std::vector<std::string>{"UCX", "POSIX", "CUDA"}));
  AgentConfig off;
  off.add_cuda_if_gpu = false;
  auto b = Agent::create("h", off);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->backends(), (std::vector<std::string>{"UCX", "POSIX"}));
}

}  // namespace
}  // namespace kvbm::xfer::detail
