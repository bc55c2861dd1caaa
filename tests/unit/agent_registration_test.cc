// Registering storages with an agent through the remote layer: state before, during and
// after a registration, its release (explicit, with the storage, after the agent), backend
// selection, the Disk rule, and the seed's doc example with System storage. The Pinned
// and Device halves are tests/gpu/remote_gpu_test.cc.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/test_support.h"
#include "xfer/metadata.h"

namespace kvbm {
namespace {

using testing::make_agent;
using xfer::MemType;

SystemStorage make_system(size_t size) {
  auto s = SystemAllocator().allocate(size);
  EXPECT_TRUE(s.ok()) << s.error().to_string();
  return std::move(*s);
}

// The regions an agent currently publishes to its peers.
std::vector<xfer::Desc> published_regions(const xfer::Agent& agent) {
  auto md = agent.local_metadata();
  EXPECT_TRUE(md.ok()) << md.error().to_string();
  auto decoded = xfer::detail::decode_metadata(*md, 64 << 20);
  EXPECT_TRUE(decoded.ok()) << decoded.error().to_string();
  std::vector<xfer::Desc> out;
  for (const auto& r : decoded->regions) out.push_back(r.desc);
  return out;
}

bool publishes(const xfer::Agent& agent, const Storage& s) {
  auto regions = published_regions(agent);
  return std::find(regions.begin(), regions.end(), xfer::Desc{s.addr(), s.size(), 0}) !=
         regions.end();
}

// The seed's doc example, with System storage (Pinned on a GPU: tests/gpu).
TEST(AgentRegistration, SeedDocExampleWithSystemStorage) {
  auto agent = make_agent("my_agent");
  auto storage = make_system(1024);
  EXPECT_FALSE(remote_storage_of(storage).has_value()) << "no descriptor before registration";

  ASSERT_TRUE(register_with_agent(storage, *agent).ok());

  auto desc = remote_storage_of(storage);
  ASSERT_TRUE(desc.has_value());
  EXPECT_EQ(desc->addr(), storage.addr());
  EXPECT_EQ(desc->size(), 1024u);
  EXPECT_EQ(desc->mem_type(), MemType::Dram);
  EXPECT_EQ(desc->device_id(), 0u);
}

TEST(AgentRegistration, StateBeforeDuringAndAfter) {
  auto agent = make_agent("a");
  auto s = make_system(8192);

  EXPECT_FALSE(is_registered_with_agent(s));
  EXPECT_EQ(registered_agent_name(s), std::nullopt);
  EXPECT_EQ(remote_storage_of(s), std::nullopt);
  EXPECT_ERROR(remote_descriptor_of(s), ErrorCode::NotRegistered, "System");
  EXPECT_ERROR(deregister_from_agent(s), ErrorCode::NotRegistered, "agent");

  ASSERT_TRUE(register_with_agent(s, *agent).ok());
  EXPECT_TRUE(is_registered_with_agent(s));
  EXPECT_EQ(registered_agent_name(s), "a");
  EXPECT_EQ(remote_storage_of(s), RemoteStorage(s.addr(), 8192, MemType::Dram, 0));
  auto d = remote_descriptor_of(s);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->agent_name(), "a");
  EXPECT_EQ(d->storage(), RemoteStorage(s.addr(), 8192, MemType::Dram, 0));
  EXPECT_FALSE(d->notif().has_value());
  EXPECT_TRUE(publishes(*agent, s));

  ASSERT_TRUE(deregister_from_agent(s).ok());
  EXPECT_FALSE(is_registered_with_agent(s));
  EXPECT_EQ(registered_agent_name(s), std::nullopt);
  EXPECT_EQ(remote_storage_of(s), std::nullopt) << "descriptor gone with the registration";
  EXPECT_ERROR(remote_descriptor_of(s), ErrorCode::NotRegistered, "not registered");
  EXPECT_FALSE(publishes(*agent, s)) << "the agent released the region";
  EXPECT_ERROR(deregister_from_agent(s), ErrorCode::NotRegistered, "agent");

  // The same range registers again once released.
  ASSERT_TRUE(register_with_agent(s, *agent).ok());
  EXPECT_TRUE(is_registered_with_agent(s));
}

TEST(AgentRegistration, AlreadyRegistered) {
  auto a = make_agent("a");
  auto b = make_agent("b");
  auto s = make_system(4096);
  ASSERT_TRUE(register_with_agent(s, *a).ok());
  EXPECT_ERROR(register_with_agent(s, *a), ErrorCode::AlreadyRegistered, "already registered");
  EXPECT_ERROR(register_with_agent(s, *b), ErrorCode::AlreadyRegistered, "already registered");
  EXPECT_EQ(registered_agent_name(s), "a") << "the first registration stands";
  EXPECT_TRUE(published_regions(*b).empty());
}

TEST(AgentRegistration, ReleasedWhenTheStorageIsDestroyed) {
  auto agent = make_agent("a");
  uint64_t addr = 0;
  {
    auto s = make_system(1 << 16);
    addr = s.addr();
    ASSERT_TRUE(register_with_agent(s, *agent).ok());
    ASSERT_EQ(published_regions(*agent).size(), 1u);
  }
  EXPECT_TRUE(published_regions(*agent).empty()) << "region at " << addr << " still published";
  // A storage moved from keeps nothing registered; the target owns the registration.
  auto s = make_system(4096);
  ASSERT_TRUE(register_with_agent(s, *agent).ok());
  SystemStorage moved = std::move(s);
  EXPECT_TRUE(is_registered_with_agent(moved));
  EXPECT_EQ(published_regions(*agent).size(), 1u);
}

// Storages and their agent may go in either order: an agent destroyed first releases
// their regions itself, and what the storages release afterwards is neither an error
// nor logged (a Disk served to peers by UCX and by POSIX included).
TEST(AgentRegistration, AgentGoneFirstIsNeitherAnErrorNorLogged) {
  testing::LogCapture log;
  auto s = make_system(4096);
  {
    auto agent = make_agent("short-lived");
    ASSERT_TRUE(register_with_agent(s, *agent).ok());
  }
  EXPECT_TRUE(deregister_from_agent(s).ok());
  EXPECT_FALSE(is_registered_with_agent(s));
  {
    testing::TempDir dir;
    auto t = make_system(4096);
    auto d = DiskStorage::allocate(4096, dir.path());
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    auto agent = make_agent("gone");
    ASSERT_TRUE(register_with_agent(t, *agent).ok());
    ASSERT_TRUE(register_with_agent(*d, *agent).ok());
    agent.reset();
  }  // the storages' destructors release their registrations
  for (const auto& line : log.lines()) ADD_FAILURE() << "logged: " << line;
}

// Agent::register_storage keeps the Disk rule itself, not only register_with_agent:
// it unlinks a file it registered, and refuses one already unlinked.
TEST(AgentRegistrationDisk, AgentRegisterStorageKeepsTheDiskRule) {
  testing::TempDir dir;
  auto agent = make_agent("a");
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  ASSERT_TRUE(agent->register_storage(*d).ok());
  EXPECT_TRUE(d->unlinked());
  EXPECT_FALSE(std::filesystem::exists(d->path()));
  ASSERT_TRUE(deregister_from_agent(*d).ok());
  EXPECT_ERROR(agent->register_storage(*d), ErrorCode::InvalidArgument,
               "'" + d->path().string() + "' is already unlinked");

  auto e = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(e.ok()) << e.error().to_string();
  ASSERT_TRUE(e->unlink().ok());
  EXPECT_ERROR(agent->register_storage(*e, "POSIX"), ErrorCode::InvalidArgument,
               "already unlinked");
  EXPECT_FALSE(is_registered_with_agent(*e));
  EXPECT_TRUE(published_regions(*agent).empty());
}

TEST(AgentRegistration, BackendIsPassedThrough) {
  auto agent = make_agent("a");
  auto s = make_system(4096);
  AgentRegistrationOptions nope;
  nope.backend = "NOPE";
  EXPECT_ERROR(register_with_agent(s, *agent, nope), ErrorCode::NotFound, "'NOPE'");
  EXPECT_FALSE(is_registered_with_agent(s));
  EXPECT_TRUE(published_regions(*agent).empty());

  AgentRegistrationOptions ucx;
  ucx.backend = "UCX";
  ASSERT_TRUE(register_with_agent(s, *agent, ucx).ok());
  EXPECT_TRUE(is_registered_with_agent(s));
}

TEST(AgentRegistration, AgentWithoutBackendsFails) {
  xfer::AgentConfig none;
  none.backends = {};
  none.add_cuda_if_gpu = false;
  auto agent = xfer::Agent::create("bare", none);
  ASSERT_TRUE(agent.ok());
  auto s = make_system(4096);
  EXPECT_ERROR(register_with_agent(s, **agent), ErrorCode::Unsupported, "DRAM");
  EXPECT_FALSE(is_registered_with_agent(s));
}

TEST(AgentRegistration, StorageWithoutMemoryIsRejected) {
  auto agent = make_agent("a");
  NullStorage null(4096);
  EXPECT_ERROR(register_with_agent(null, *agent), ErrorCode::InvalidArgument, "Null");
  EXPECT_FALSE(is_registered_with_agent(null));
}

// Whether this build's agent has a backend that registers FILE memory.
bool agent_registers_files(xfer::Agent& agent, DiskStorage& probe, Status* result) {
  *result = register_with_agent(probe, agent);
  if (result->ok()) return true;
  const auto code = result->code();
  return code != ErrorCode::Unsupported && code != ErrorCode::NotFound &&
         code != ErrorCode::NotRegistered;
}

TEST(AgentRegistrationDisk, SuccessUnlinksTheFileAndKeepsTheData) {
  testing::TempDir dir;
  auto agent = make_agent("a");
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  auto data = SystemAllocator().allocate(4096);  // page-aligned, as O_DIRECT needs
  ASSERT_TRUE(data.ok());
  testing::fill_pattern(data->data(), 4096, 3);
  ASSERT_EQ(pwrite(d->fd(), data->data(), 4096, 0), 4096);
  const auto path = d->path();

  Status st;
  if (!agent_registers_files(*agent, *d, &st)) {
    EXPECT_TRUE(std::filesystem::exists(path)) << "a failed registration must not unlink";
    std::string backends;
    for (const auto& b : agent->backends()) backends += " " + b;
    GTEST_SKIP() << "no backend of this agent (" << backends
                 << " ) registers FILE memory: " << st.error().to_string();
  }
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_TRUE(d->unlinked());
  EXPECT_FALSE(std::filesystem::exists(path)) << path;
  auto back = SystemAllocator().allocate(4096);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(pread(d->fd(), back->data(), 4096, 0), 4096);
  EXPECT_EQ(testing::find_pattern_mismatch(back->data(), 4096, 3), SIZE_MAX)
      << "the fd keeps the bytes";
  auto desc = remote_storage_of(*d);
  ASSERT_TRUE(desc.has_value());
  EXPECT_EQ(*desc, RemoteStorage(0, 4096, MemType::File, static_cast<uint64_t>(d->fd())));

  // Deregistered, an unlinked storage cannot be registered again.
  ASSERT_TRUE(deregister_from_agent(*d).ok());
  EXPECT_ERROR(register_with_agent(*d, *agent), ErrorCode::InvalidArgument, "already unlinked");
}

TEST(AgentRegistrationDisk, UnlinkedStorageIsRejected) {
  testing::TempDir dir;
  auto agent = make_agent("a");
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  ASSERT_TRUE(d->unlink().ok());
  EXPECT_ERROR(register_with_agent(*d, *agent), ErrorCode::InvalidArgument,
               "'" + d->path().string() + "' is already unlinked");
  EXPECT_FALSE(is_registered_with_agent(*d));
  EXPECT_TRUE(published_regions(*agent).empty());
}

TEST(AgentRegistrationDisk, FailedRegistrationDoesNotUnlink) {
  testing::TempDir dir;
  auto agent = make_agent("a");
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  AgentRegistrationOptions nope;
  nope.backend = "NOPE";
  EXPECT_ERROR(register_with_agent(*d, *agent, nope), ErrorCode::NotFound, "'NOPE'");
  EXPECT_FALSE(d->unlinked());
  EXPECT_TRUE(std::filesystem::exists(d->path()));
  // An agent with no backend for files: registering one fails, and leaves the file.
  xfer::AgentConfig bare_config;
  bare_config.backends = {};
  bare_config.add_cuda_if_gpu = false;
  auto bare = xfer::Agent::create("bare", bare_config);
  ASSERT_TRUE(bare.ok()) << bare.error().to_string();
  EXPECT_ERROR(register_with_agent(*d, **bare), ErrorCode::Unsupported, "FILE");
  EXPECT_FALSE(d->unlinked());
  EXPECT_TRUE(std::filesystem::exists(d->path()));
  // Already registered (a handle under the agent's key) also leaves the file.
  struct Dummy : RegistrationHandle {
    Status release() override { return {}; }
  };
  ASSERT_TRUE(d->register_handle(xfer::Agent::kRegistrationKey, std::make_unique<Dummy>()).ok());
  EXPECT_ERROR(register_with_agent(*d, *agent), ErrorCode::AlreadyRegistered, "already");
  EXPECT_FALSE(d->unlinked());
  EXPECT_TRUE(std::filesystem::exists(d->path()));
}

}  // namespace
}  // namespace kvbm
