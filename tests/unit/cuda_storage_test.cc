// CUDA-backed storages on any machine: without a GPU (or without a CUDA build) every
// entry point must give DeviceUnavailable, never crash. With a GPU, see tests/gpu/.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

class NoGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count().ok()) GTEST_SKIP() << "a GPU is present; tests/gpu covers it";
  }
};

TEST_F(NoGpu, DeviceCountSaysWhy) {
  auto n = cuda_device_count();
  EXPECT_ERROR(n, ErrorCode::DeviceUnavailable, built_with_cuda() ? "GPU" : "without CUDA");
  // Where no driver is installed at all, in those words (not CUDA's "insufficient").
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (driver != nullptr) {
    dlclose(driver);
  } else if (built_with_cuda()) {
    EXPECT_ERROR(n, ErrorCode::DeviceUnavailable, "no NVIDIA driver (libcuda.so.1 not found)");
  }
}

TEST_F(NoGpu, PinnedAllocate) {
  EXPECT_ERROR(PinnedAllocator().allocate(4096), ErrorCode::DeviceUnavailable, "");
}

TEST_F(NoGpu, PinExistingMemory) {
  auto sys = SystemStorage::allocate(4096);
  ASSERT_TRUE(sys.ok());
  EXPECT_ERROR(PinnedStorage::pin(std::move(*sys)), ErrorCode::DeviceUnavailable, "");
  std::vector<char> v(4096);
  EXPECT_ERROR(PinnedStorage::pin(v.data(), v.size()), ErrorCode::DeviceUnavailable, "");
}

TEST_F(NoGpu, DeviceAllocate) {
  EXPECT_ERROR(DeviceAllocator(0).allocate(4096), ErrorCode::DeviceUnavailable, "");
  EXPECT_ERROR(DeviceStorage::allocate(4096, 3), ErrorCode::DeviceUnavailable, "");
}

// Argument checks come before the GPU check, on any machine.
TEST(CudaStorage, ZeroSizeIsInvalid) {
  if (!built_with_cuda()) GTEST_SKIP() << "built without CUDA";
  EXPECT_ERROR(PinnedAllocator().allocate(0), ErrorCode::InvalidArgument, "size");
  EXPECT_ERROR(DeviceAllocator(0).allocate(0), ErrorCode::InvalidArgument, "size");
  EXPECT_ERROR(PinnedStorage::pin(nullptr, 16), ErrorCode::InvalidArgument, "null");
}

}  // namespace
}  // namespace kvbm
