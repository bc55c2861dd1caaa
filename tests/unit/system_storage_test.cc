#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>

#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

TEST(SystemStorage, PageAlignedZeroFilledReadWrite) {
  SystemAllocator alloc;
  auto s = alloc.allocate(3 * 4096 + 5);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->type(), StorageType::system());
  EXPECT_EQ(s->type().to_string(), "System");
  EXPECT_EQ(s->size(), 3u * 4096 + 5);
  EXPECT_EQ(s->addr() % static_cast<uint64_t>(sysconf(_SC_PAGESIZE)), 0u);
  EXPECT_EQ(s->addr(), reinterpret_cast<uint64_t>(s->data()));
  const auto* bytes = static_cast<const uint8_t*>(s->data());
  for (size_t i = 0; i < s->size(); ++i) ASSERT_EQ(bytes[i], 0) << "byte " << i;
  testing::fill_pattern(s->data(), s->size(), 7);
  EXPECT_EQ(testing::find_pattern_mismatch(s->data(), s->size(), 7), SIZE_MAX);
}

TEST(SystemStorage, ZeroSizeIsInvalid) {
  EXPECT_ERROR(SystemStorage::allocate(0), ErrorCode::InvalidArgument, "size must be > 0");
}

TEST(SystemStorage, ImpossibleSizeFailsCleanly) {
  const size_t huge = size_t{1} << 62;
  EXPECT_ERROR(SystemStorage::allocate(huge), ErrorCode::AllocationFailed, std::to_string(huge));
}

TEST(SystemStorage, MoveLeavesSourceEmpty) {
  auto s = SystemStorage::allocate(4096);
  ASSERT_TRUE(s.ok());
  void* p = s->data();
  SystemStorage moved = std::move(*s);
  EXPECT_EQ(moved.data(), p);
  EXPECT_EQ(s->data(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(s->size(), 0u);
}

TEST(NullStorage, HasNoBytes) {
  NullStorage n(128);
  EXPECT_EQ(n.type(), StorageType::null());
  EXPECT_EQ(n.size(), 128u);
  EXPECT_EQ(n.addr(), 0u);
  EXPECT_EQ(n.data(), nullptr);
}

TEST(StorageType, Names) {
  EXPECT_EQ(StorageType::device(3).to_string(), "Device(3)");
  EXPECT_EQ(StorageType::disk(9).to_string(), "Disk(fd 9)");
  EXPECT_EQ(StorageType::pinned().to_string(), "Pinned");
  EXPECT_EQ(StorageType::remote().to_string(), "Remote");
  EXPECT_EQ(StorageType::null().to_string(), "Null");
  EXPECT_NE(StorageType::device(0), StorageType::device(1));
}

}  // namespace
}  // namespace kvbm
