// The remote layer on a real GPU: the seed's doc example with Pinned storage, Pinned and
// Device registration with an agent, device ids (the CUDA ordinal for GPU memory).
// Every test skips, with CUDA's reason, where there is no GPU.
#include <gtest/gtest.h>

#include "kvbm/cuda.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using testing::make_agent;
using xfer::MemType;

// The seed's doc example: pinned storage has no descriptor until it is registered.
TEST(RemoteGpu, SeedDocExampleWithPinnedStorage) {
  KVBM_REQUIRE_GPU();
  auto agent = make_agent("my_agent");
  ASSERT_NE(agent, nullptr);
  auto storage = PinnedAllocator().allocate(1024);
  ASSERT_TRUE(storage.ok()) << storage.error().to_string();
  EXPECT_FALSE(remote_storage_of(*storage).has_value());

  ASSERT_TRUE(register_with_agent(*storage, *agent).ok());

  auto desc = remote_storage_of(*storage);
  ASSERT_TRUE(desc.has_value());
  EXPECT_EQ(desc->addr(), storage->addr());
  EXPECT_EQ(desc->size(), 1024u);
  EXPECT_EQ(desc->mem_type(), MemType::Dram);
  EXPECT_EQ(desc->device_id(), 0u);
}

TEST(RemoteGpu, PinnedRegistrationLifecycle) {
  KVBM_REQUIRE_GPU();
  auto agent = make_agent("a");
  ASSERT_NE(agent, nullptr);
  auto p = PinnedAllocator().allocate(1 << 20);
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_FALSE(is_registered_with_agent(*p));
  EXPECT_EQ(registered_agent_name(*p), std::nullopt);
  ASSERT_TRUE(register_with_agent(*p, *agent).ok());
  EXPECT_TRUE(is_registered_with_agent(*p));
  EXPECT_EQ(registered_agent_name(*p), "a");
  EXPECT_ERROR(register_with_agent(*p, *agent), ErrorCode::AlreadyRegistered, "already");
  auto d = remote_descriptor_of(*p);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->storage(), RemoteStorage(p->addr(), 1 << 20, MemType::Dram, 0));
  ASSERT_TRUE(deregister_from_agent(*p).ok());
  EXPECT_EQ(remote_storage_of(*p), std::nullopt);
  ASSERT_TRUE(register_with_agent(*p, *agent).ok()) << "the range is free again";
}

TEST(RemoteGpu, DeviceDescriptorCarriesTheOrdinal) {
  KVBM_REQUIRE_GPU();
  auto count = cuda_device_count();
  ASSERT_TRUE(count.ok());
  for (int ordinal = 0; ordinal < *count; ++ordinal) {
    auto dev = DeviceAllocator(ordinal).allocate(1 << 20);
    ASSERT_TRUE(dev.ok()) << dev.error().to_string();
    auto r = RemoteStorage::from_storage_with_offset(*dev, 4096, 8192);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->mem_type(), MemType::Vram);
    EXPECT_EQ(r->device_id(), static_cast<uint64_t>(ordinal));
    EXPECT_EQ(r->addr(), dev->addr() + 4096);
    EXPECT_ERROR(RemoteStorage::from_storage_with_offset(*dev, 4096, 1 << 20),
                 ErrorCode::OutOfBounds, "offset 4096 + size 1048576 exceeds storage size 1048576");
  }
}

TEST(RemoteGpu, DeviceRegistration) {
  KVBM_REQUIRE_GPU();
  auto agent = make_agent("gpu-agent");
  ASSERT_NE(agent, nullptr);
  auto dev = DeviceAllocator(0).allocate(1 << 20);
  ASSERT_TRUE(dev.ok()) << dev.error().to_string();
  EXPECT_FALSE(remote_storage_of(*dev).has_value());
  auto st = register_with_agent(*dev, *agent);
  if (!st && st.code() == ErrorCode::Unsupported) {
    EXPECT_FALSE(is_registered_with_agent(*dev));
    GTEST_SKIP() << "no backend of this agent registers VRAM: " << st.error().to_string();
  }
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  auto desc = remote_storage_of(*dev);
  ASSERT_TRUE(desc.has_value());
  EXPECT_EQ(*desc, RemoteStorage(dev->addr(), 1 << 20, MemType::Vram, 0));
  EXPECT_EQ(registered_agent_name(*dev), "gpu-agent");
  ASSERT_TRUE(deregister_from_agent(*dev).ok());
  EXPECT_FALSE(remote_storage_of(*dev).has_value());
}

}  // namespace
}  // namespace kvbm
