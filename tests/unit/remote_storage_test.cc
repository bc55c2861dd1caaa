// RemoteStorage: memory-type mapping, device ids, sub-region descriptors and their
// bounds checks (overflow included), slices. The GPU half is tests/gpu/remote_gpu_test.cc.
#include <gtest/gtest.h>

#include <cstdint>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using xfer::MemType;

TEST(RemoteMemType, EveryStorageKindMaps) {
  EXPECT_EQ(xfer::mem_type_of(StorageType::system()), MemType::Dram);
  EXPECT_EQ(xfer::mem_type_of(StorageType::pinned()), MemType::Dram);
  EXPECT_EQ(xfer::mem_type_of(StorageType::device(0)), MemType::Vram);
  EXPECT_EQ(xfer::mem_type_of(StorageType::device(3)), MemType::Vram);
  EXPECT_EQ(xfer::mem_type_of(StorageType::disk(7)), MemType::File);
  EXPECT_EQ(xfer::mem_type_of(StorageType::remote()), MemType::Unknown);
  EXPECT_EQ(xfer::mem_type_of(StorageType::null()), MemType::Unknown);
  // A kind beyond the enum (corrupt value) is Unknown, not undefined behaviour.
  EXPECT_EQ(xfer::mem_type_of(StorageType{static_cast<StorageKind>(200), 0}), MemType::Unknown);
}

TEST(RemoteStorage, IsARemoteStorageThatOwnsNoMemory) {
  RemoteStorage r(0x1000, 64, MemType::Vram, 2);
  EXPECT_EQ(r.type(), StorageType::remote());
  EXPECT_EQ(r.addr(), 0x1000u);
  EXPECT_EQ(r.size(), 64u);
  EXPECT_EQ(r.mem_type(), MemType::Vram);
  EXPECT_EQ(r.device_id(), 2u);
  EXPECT_EQ(r.data(), nullptr);
  EXPECT_EQ(r.to_desc_list(), xfer::DescList(MemType::Vram, {xfer::Desc{0x1000, 64, 2}}));

  RemoteStorage copy = r;
  EXPECT_EQ(copy, r);
  RemoteStorage other(1, 2, MemType::Dram, 0);
  EXPECT_NE(other, r);
  other = r;
  EXPECT_EQ(other, r);
  EXPECT_NE(r, RemoteStorage(0x1000, 64, MemType::Vram, 3));
  EXPECT_NE(r, RemoteStorage(0x1000, 64, MemType::File, 2));
  EXPECT_NE(r, RemoteStorage(0x1000, 65, MemType::Vram, 2));
}

TEST(RemoteStorage, SystemStorageIsDramDeviceZero) {
  auto s = SystemAllocator().allocate(8192);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  auto whole = RemoteStorage::from_storage_with_offset(*s, 0, 8192);
  ASSERT_TRUE(whole.ok()) << whole.error().to_string();
  EXPECT_EQ(whole->addr(), s->addr());
  EXPECT_EQ(whole->size(), 8192u);
  EXPECT_EQ(whole->mem_type(), MemType::Dram);
  EXPECT_EQ(whole->device_id(), 0u);

  auto sub = RemoteStorage::from_storage_with_offset(*s, 4096, 100);
  ASSERT_TRUE(sub.ok()) << sub.error().to_string();
  EXPECT_EQ(sub->addr(), s->addr() + 4096);
  EXPECT_EQ(sub->size(), 100u);
  EXPECT_EQ(sub->mem_type(), MemType::Dram);
  EXPECT_EQ(sub->device_id(), 0u);

  // Edges: an empty range at the end fits, the last byte fits.
  EXPECT_TRUE(RemoteStorage::from_storage_with_offset(*s, 8192, 0).ok());
  EXPECT_TRUE(RemoteStorage::from_storage_with_offset(*s, 8191, 1).ok());
}

TEST(RemoteStorage, DiskStorageIsFileWithFdAsDevice) {
  testing::TempDir dir;
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  auto r = RemoteStorage::from_storage_with_offset(*d, 512, 1024);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->mem_type(), MemType::File);
  EXPECT_EQ(r->device_id(), static_cast<uint64_t>(d->fd()));
  EXPECT_EQ(r->addr(), 512u) << "file addresses are offsets";
  EXPECT_EQ(r->size(), 1024u);
}

TEST(RemoteStorage, OutOfBoundsNamesOffsetSizeAndTotal) {
  auto s = SystemAllocator().allocate(8192);
  ASSERT_TRUE(s.ok());
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, 4096, 8192), ErrorCode::OutOfBounds,
               "offset 4096 + size 8192 exceeds storage size 8192");
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, 8193, 0), ErrorCode::OutOfBounds,
               "offset 8193 + size 0");
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, 0, 8193), ErrorCode::OutOfBounds,
               "size 8193");
}

TEST(RemoteStorage, OutOfBoundsIsOverflowSafe) {
  auto s = SystemAllocator().allocate(4096);
  ASSERT_TRUE(s.ok());
  // offset + size wraps around to a small number: still out of bounds.
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, SIZE_MAX, 2), ErrorCode::OutOfBounds,
               std::to_string(SIZE_MAX));
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, 16, SIZE_MAX - 15),
               ErrorCode::OutOfBounds, "offset 16");
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*s, SIZE_MAX, SIZE_MAX),
               ErrorCode::OutOfBounds, "exceeds storage size 4096");
}

TEST(RemoteStorage, StoragesWithoutMemoryAreRejected) {
  NullStorage null(4096);
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(null, 0, 16), ErrorCode::InvalidArgument,
               "Null");
}

TEST(RemoteStorage, FromARemoteStorageIsASlice) {
  RemoteStorage r(0x10000, 4096, MemType::Vram, 1);
  auto sub = RemoteStorage::from_storage_with_offset(r, 1024, 1024);
  ASSERT_TRUE(sub.ok()) << sub.error().to_string();
  EXPECT_EQ(*sub, RemoteStorage(0x10000 + 1024, 1024, MemType::Vram, 1));
  EXPECT_ERROR(RemoteStorage::from_storage_with_offset(r, 4000, 100), ErrorCode::OutOfBounds,
               "offset 4000 + size 100 exceeds storage size 4096");
}

TEST(RemoteStorage, SliceKeepsTypeAndDevice) {
  RemoteStorage r(0x2000, 1000, MemType::File, 9);
  auto s = r.slice(100, 200);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(*s, RemoteStorage(0x2000 + 100, 200, MemType::File, 9));
  auto nested = s->slice(50, 150);
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(*nested, RemoteStorage(0x2000 + 150, 150, MemType::File, 9));
  EXPECT_TRUE(r.slice(0, 1000).ok());
  EXPECT_TRUE(r.slice(1000, 0).ok());
  EXPECT_ERROR(r.slice(0, 1001), ErrorCode::OutOfBounds,
               "offset 0 + size 1001 exceeds storage size 1000");
  EXPECT_ERROR(s->slice(150, 51), ErrorCode::OutOfBounds, "exceeds storage size 200");
  EXPECT_ERROR(r.slice(SIZE_MAX, 1), ErrorCode::OutOfBounds, std::to_string(SIZE_MAX));
  EXPECT_ERROR(r.slice(1, SIZE_MAX), ErrorCode::OutOfBounds, "offset 1");
}

}  // namespace
}  // namespace kvbm
