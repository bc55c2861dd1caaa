// Storage on a real GPU. Every test skips, with CUDA's reason, where there is none.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kvbm/storage.h"
#include "support/test_support.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm {
namespace {

#if KVBM_HAVE_CUDA

TEST(GpuStorage, PinnedIsPageLockedAndMapped) {
  KVBM_REQUIRE_GPU();
  auto p = PinnedAllocator().allocate(1 << 20);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ(p->type(), StorageType::pinned());
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, p->data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
  EXPECT_NE(p->device_pointer(), nullptr);
  testing::fill_pattern(p->data(), p->size(), 5);
  EXPECT_EQ(testing::find_pattern_mismatch(p->data(), p->size(), 5), SIZE_MAX);
}

TEST(GpuStorage, PinExistingSystemMemory) {
  KVBM_REQUIRE_GPU();
  auto sys = SystemStorage::allocate(1 << 20);
  ASSERT_TRUE(sys.ok());
  void* addr = sys->data();
  auto p = PinnedStorage::pin(std::move(*sys));
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_EQ(p->data(), addr);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, p->data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
}

TEST(GpuStorage, PinningTwiceFails) {
  KVBM_REQUIRE_GPU();
  std::vector<char> v(1 << 16);
  auto a = PinnedStorage::pin(v.data(), v.size());
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_ERROR(PinnedStorage::pin(v.data(), v.size()), ErrorCode::RegistrationFailed,
               "cudaHostRegister");
}

TEST(GpuStorage, DeviceRoundTripAndOrdinal) {
  KVBM_REQUIRE_GPU();
  auto d = DeviceAllocator(0).allocate(1 << 20);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->type(), StorageType::device(0));
  EXPECT_EQ(d->ordinal(), 0);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, d->data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 0);

  auto host = PinnedAllocator().allocate(1 << 20);
  ASSERT_TRUE(host.ok());
  testing::fill_pattern(host->data(), host->size(), 9);
  ASSERT_EQ(cudaMemcpy(d->data(), host->data(), 1 << 20, cudaMemcpyHostToDevice), cudaSuccess);
  std::memset(host->data(), 0, host->size());
  ASSERT_EQ(cudaMemcpy(host->data(), d->data(), 1 << 20, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(testing::find_pattern_mismatch(host->data(), host->size(), 9), SIZE_MAX);
}

TEST(GpuStorage, BadOrdinal) {
  KVBM_REQUIRE_GPU();
  int n = *cuda_device_count();
  EXPECT_ERROR(DeviceAllocator(n).allocate(4096), ErrorCode::InvalidArgument,
               "device ordinal " + std::to_string(n));
  EXPECT_ERROR(DeviceAllocator(-1).allocate(4096), ErrorCode::InvalidArgument, "-1");
}

TEST(GpuStorage, ImpossibleSizes) {
  KVBM_REQUIRE_GPU();
  const size_t huge = size_t{1} << 50;
  EXPECT_ERROR(DeviceAllocator(0).allocate(huge), ErrorCode::AllocationFailed,
               std::to_string(huge));
  EXPECT_ERROR(PinnedAllocator().allocate(huge), ErrorCode::AllocationFailed, std::to_string(huge));
}

#else

TEST(GpuStorage, BuiltWithoutCuda) {
  GTEST_SKIP() << "kvbm was built without CUDA";
}

#endif

}  // namespace
}  // namespace kvbm
