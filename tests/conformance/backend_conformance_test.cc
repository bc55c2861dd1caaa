// The backend contract (src/xfer/backends/README.md), checked the same way for every
// backend through the agent: each case names a backend and the memory pair it moves, and
// every test runs for each case what the backend supports; GPU backends skip without a
// GPU (GDS also where cuFile is missing or refuses the test's file system).
//   Created      the agent creates it by name and refuses parameters it does not know
//   Register     registers the memory types it says, and no backend takes the others
//   Local        READ and WRITE between this agent's own regions, every byte checked
//   Notify       a notification follows the data (or is refused where none is carried)
//   Peer         READ and WRITE with another agent (or Unsupported where not reached)
//   Bounds       descriptors outside the registered memory are refused
//   Cancel       requests destroyed while in flight leave the agent usable
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "kvbm/cuda.h"
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
using testing::TempDir;

constexpr size_t kLen = 64 << 10;

struct BackendCase {
  const char* name;
  MemType local;  // the memory its requests move: local <-> remote
  MemType remote;
  MemType foreign;  // a type it does not register
  bool gpu;         // needs a GPU
  bool peers;       // reaches another agent's memory
  bool notifies;    // carries notifications (to the agent itself at least)
  bool notifies_peers;
  const char* label = nullptr;  // the test name's suffix, where not the backend's name
  BackendParams params = {};    // created with these (create_backend) where given
};

// UCX itself, without the same-host path (the agents share a process): its own RMA over
// active messages, and ucp_put/get.
const BackendParams kUcxAm = {{"same_host", "off"}, {"rma", "am"}};
const BackendParams kUcxNative = {{"same_host", "off"}, {"rma", "native"}};

const BackendCase kCases[] = {
    {"NULL", MemType::Dram, MemType::Dram, MemType::File, false, false, true, false},
    {"UCX", MemType::Dram, MemType::Dram, MemType::Vram, false, true, true, true},
    {"UCX", MemType::Dram, MemType::Dram, MemType::Vram, false, true, true, true, "UCX_am", kUcxAm},
    {"UCX", MemType::Dram, MemType::Dram, MemType::Vram, false, true, true, true, "UCX_native",
     kUcxNative},
    {"POSIX", MemType::Dram, MemType::File, MemType::Vram, false, false, true, false},
    {"CUDA", MemType::Dram, MemType::Vram, MemType::File, true, true, false, false},
    {"GDS", MemType::Vram, MemType::File, MemType::Dram, true, false, true, false},
};

// The first byte of [p, p + len) off the pattern of `seed` (seed 0: zeros), or SIZE_MAX.
size_t first_off(const char* p, size_t len, uint64_t seed) {
  if (seed != 0) return find_pattern_mismatch(p, len, seed);
  return testing::first_byte_not(p, len, 0);
}

// A page-aligned host buffer of kLen bytes (O_DIRECT files read and write only such).
struct HostBuffer {
  HostBuffer() : p(static_cast<char*>(std::aligned_alloc(4096, kLen))) { std::memset(p, 0, kLen); }
  ~HostBuffer() { std::free(p); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  char* p;
};

void PrintTo(const BackendCase& c, std::ostream* os) {
  *os << (c.label ? c.label : c.name);
}

// One buffer of a memory type, with a host view to fill and check it.
class Memory {
 public:
  virtual ~Memory() = default;
  virtual DescList descs(uint64_t offset, uint64_t len) const = 0;
  virtual void fill(uint64_t seed) = 0;  // the whole buffer: the pattern of `seed`, or zeros
  virtual size_t mismatch(uint64_t seed) const = 0;  // first byte off the pattern, or SIZE_MAX
  DescList all() const { return descs(0, kLen); }
};

class DramMemory final : public Memory {
 public:
  DramMemory() : storage_(SystemAllocator().allocate(kLen)) {}
  bool ok() const { return storage_.ok(); }
  DescList descs(uint64_t offset, uint64_t len) const override {
    return DescList(MemType::Dram, {Desc{storage_->addr() + offset, len, 0}});
  }
  void fill(uint64_t seed) override {
    auto* p = reinterpret_cast<char*>(storage_->addr());
    if (seed == 0) {
      std::memset(p, 0, kLen);
    } else {
      fill_pattern(p, kLen, seed);
    }
  }
  size_t mismatch(uint64_t seed) const override {
    return first_off(reinterpret_cast<const char*>(storage_->addr()), kLen, seed);
  }

 private:
  Result<SystemStorage> storage_;
};

class FileMemory final : public Memory {
 public:
  FileMemory() {
    const auto path = dir_.path() / "f";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd_ < 0) fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0 && ::ftruncate(fd_, kLen) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~FileMemory() override {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  DescList descs(uint64_t offset, uint64_t len) const override {
    return DescList(MemType::File, {Desc{offset, len, static_cast<uint64_t>(fd_)}});
  }
  void fill(uint64_t seed) override {
    HostBuffer host;
    if (seed != 0) fill_pattern(host.p, kLen, seed);
    ASSERT_EQ(::pwrite(fd_, host.p, kLen, 0), static_cast<ssize_t>(kLen));
  }
  size_t mismatch(uint64_t seed) const override {
    HostBuffer host;
    if (::pread(fd_, host.p, kLen, 0) != static_cast<ssize_t>(kLen)) return 0;
    return first_off(host.p, kLen, seed);
  }

 private:
  TempDir dir_;
  int fd_ = -1;
};

#if KVBM_HAVE_CUDA
class VramMemory final : public Memory {
 public:
  VramMemory() {
    if (cudaMalloc(&p_, kLen) != cudaSuccess) p_ = nullptr;
  }
  ~VramMemory() override {
    if (p_ != nullptr) cudaFree(p_);
  }
  bool ok() const { return p_ != nullptr; }
  DescList descs(uint64_t offset, uint64_t len) const override {
    int dev = 0;
    cudaGetDevice(&dev);
    return DescList(MemType::Vram, {Desc{reinterpret_cast<uint64_t>(p_) + offset, len,
                                         static_cast<uint64_t>(dev)}});
  }
  void fill(uint64_t seed) override {
    std::vector<char> host(kLen);
    if (seed != 0) fill_pattern(host.data(), kLen, seed);
    ASSERT_EQ(cudaMemcpy(p_, host.data(), kLen, cudaMemcpyHostToDevice), cudaSuccess);
  }
  size_t mismatch(uint64_t seed) const override {
    std::vector<char> host(kLen);
    if (cudaMemcpy(host.data(), p_, kLen, cudaMemcpyDeviceToHost) != cudaSuccess) return 0;
    return first_off(host.data(), kLen, seed);
  }

 private:
  void* p_ = nullptr;
};
#endif

std::unique_ptr<Memory> make_memory(MemType type) {
  switch (type) {
    case MemType::Dram: {
      auto m = std::make_unique<DramMemory>();
      return m->ok() ? std::move(m) : nullptr;
    }
    case MemType::File: {
      auto m = std::make_unique<FileMemory>();
      return m->ok() ? std::move(m) : nullptr;
    }
#if KVBM_HAVE_CUDA
    case MemType::Vram: {
      auto m = std::make_unique<VramMemory>();
      return m->ok() ? std::move(m) : nullptr;
    }
#endif
    default:
      return nullptr;
  }
}

Status run(Agent& a, Op op, const DescList& local, const DescList& remote, const std::string& peer,
           std::optional<std::string> notif = std::nullopt) {
  auto req = a.create_request(op, local, remote, peer, std::move(notif));
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(30s);
}

// Waits (bounded) until `a` has received `want`; then no other notification.
::testing::AssertionResult got_notif(Agent& a, const Notification& want) {
  std::vector<Notification> seen;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (seen.empty() && std::chrono::steady_clock::now() < until) {
    for (auto& n : a.get_notifs()) seen.push_back(std::move(n));
    if (seen.empty()) std::this_thread::sleep_for(1ms);
  }
  if (seen.size() == 1 && seen[0] == want) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure() << seen.size() << " notification(s):";
  for (const auto& n : seen) r << " {" << n.agent << ", " << n.message << "}";
  return r;
}

class BackendConformance : public ::testing::TestWithParam<BackendCase> {
 protected:
  // An agent with this backend alone (no CUDA added behind it); null, with the test
  // skipped, where the backend cannot run here (GDS without cuFile).
  std::unique_ptr<Agent> make_agent(const std::string& name) {
    AgentConfig config;
    const bool params = !GetParam().params.empty();
    config.backends = {};
    if (!params) config.backends = {GetParam().name};
    config.add_cuda_if_gpu = false;
    auto a = Agent::create(name, std::move(config));
    if (!a && GetParam().gpu) {
      skip_reason_ = a.error().to_string();
      return nullptr;
    }
    EXPECT_TRUE(a.ok()) << a.error().to_string();
    if (!a) return nullptr;
    if (params) {
      auto st = (*a)->create_backend(GetParam().name, GetParam().params);
      EXPECT_TRUE(st.ok()) << st.error().to_string();
      if (!st) return nullptr;
    }
    return std::move(*a);
  }

  // Registers `m` with `a`, or says why not (GDS: cuFile may refuse the file system).
  std::unique_ptr<MemoryRegistration> register_memory(Agent& a, const Memory& m) {
    auto reg = a.register_memory(m.all());
    if (!reg) {
      skip_reason_ = reg.error().to_string();
      return nullptr;
    }
    return std::move(*reg);
  }

  // Agent "a" (and with `peer`, agent "b", which the remote memory is registered with and
  // whose metadata "a" loads), the case's two memories, registered. False where the test
  // cannot go on: a failure, or skip_reason_ says why it is skipped.
  bool set_up(bool peer = false) {
    a_ = make_agent("a");  // first: without a GPU, GPU backends skip here
    if (!a_) return false;
    local_ = make_memory(GetParam().local);
    remote_ = make_memory(GetParam().remote);
    EXPECT_TRUE(local_ && remote_);
    if (!local_ || !remote_) return false;
    if (peer) {
      b_ = make_agent("b");
      if (!b_) return false;
    }
    regs_.push_back(register_memory(*a_, *local_));
    if (!regs_.back()) return false;
    regs_.push_back(register_memory(peer ? *b_ : *a_, *remote_));
    if (!regs_.back()) return false;
    if (!peer) return true;
    auto md = b_->local_metadata();
    EXPECT_TRUE(md) << md.error().to_string();
    if (!md) return false;
    auto loaded = a_->load_remote_metadata(*md);
    EXPECT_TRUE(loaded) << loaded.error().to_string();
    if (!loaded) return false;
    EXPECT_EQ(*loaded, "b");
    return true;
  }

  std::string skip_reason_;
  // Declared so that registrations go first, then the memory, then the agents.
  std::unique_ptr<Agent> a_, b_;
  std::unique_ptr<Memory> local_, remote_;
  std::vector<std::unique_ptr<MemoryRegistration>> regs_;
};

#define SET_UP_OR_SKIP(...)                                    \
  do {                                                         \
    if (!set_up(__VA_ARGS__)) {                                \
      if (HasFailure()) return;                                \
      GTEST_SKIP() << GetParam().name << ": " << skip_reason_; \
    }                                                          \
  } while (0)

TEST_P(BackendConformance, CreatedByNameAndRefusesUnknownParameters) {
  AgentConfig config;
  config.backends = {};
  config.add_cuda_if_gpu = false;
  auto a = Agent::create("a", std::move(config));
  ASSERT_TRUE(a) << a.error().to_string();
  auto bad = (*a)->create_backend(GetParam().name, {{"no_such_knob", "1"}});
  // A GPU backend this build leaves out (no CUDA): NotFound or DeviceUnavailable.
  if (GetParam().gpu &&
      (bad.code() == ErrorCode::NotFound || bad.code() == ErrorCode::DeviceUnavailable)) {
    GTEST_SKIP() << bad.error().to_string();
  }
  EXPECT_ERROR(bad, ErrorCode::InvalidArgument, "has no parameter 'no_such_knob'");
  auto st = (*a)->create_backend(GetParam().name);
  if (!st && GetParam().gpu) GTEST_SKIP() << st.error().to_string();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ((*a)->backends(), std::vector<std::string>{GetParam().name});
}

TEST_P(BackendConformance, RegistersItsMemoryTypesOnly) {
  SET_UP_OR_SKIP();
  Agent* a = a_.get();
  EXPECT_EQ(regs_.front()->agent_name(), "a");
  // A type no backend of this agent registers: Unsupported, naming the agent.
  const DescList foreign(GetParam().foreign, {Desc{0x1000, 4096, 0}});
  EXPECT_ERROR(a->register_memory(foreign), ErrorCode::Unsupported, "no backend of agent 'a'");
}

TEST_P(BackendConformance, LocalWriteThenReadEveryByte) {
  SET_UP_OR_SKIP();
  Agent* a = a_.get();
  Memory* local = local_.get();
  Memory* remote = remote_.get();
  local->fill(7);
  remote->fill(0);
  ASSERT_TRUE(run(*a, Op::Write, local->all(), remote->all(), "a"));
  EXPECT_EQ(remote->mismatch(7), SIZE_MAX);
  local->fill(0);
  ASSERT_TRUE(run(*a, Op::Read, local->all(), remote->all(), "a"));
  EXPECT_EQ(local->mismatch(7), SIZE_MAX);
}

// Moved from posix_backend_test (NotificationsReachTheAgentItself), for every backend.
TEST_P(BackendConformance, NotificationFollowsTheData) {
  SET_UP_OR_SKIP();
  Agent* a = a_.get();
  Memory* local = local_.get();
  Memory* remote = remote_.get();
  local->fill(9);
  if (!GetParam().notifies) {
    EXPECT_ERROR(run(*a, Op::Write, local->all(), remote->all(), "a", "saved"),
                 ErrorCode::Unsupported, "cannot deliver notifications");
    EXPECT_ERROR(a->gen_notif("a", "hello"), ErrorCode::Unsupported, "carries notifications");
    return;
  }
  ASSERT_TRUE(run(*a, Op::Write, local->all(), remote->all(), "a", "saved"));
  EXPECT_EQ(remote->mismatch(9), SIZE_MAX);
  EXPECT_TRUE(got_notif(*a, Notification{"a", "saved"}));
  ASSERT_TRUE(a->gen_notif("a", "hello"));
  EXPECT_TRUE(got_notif(*a, Notification{"a", "hello"}));
}

TEST_P(BackendConformance, PeerWriteThenReadOrUnsupported) {
  SET_UP_OR_SKIP(true);
  Agent* a = a_.get();
  Agent* b = b_.get();
  Memory* local = local_.get();
  Memory* remote = remote_.get();
  local->fill(11);
  remote->fill(0);
  if (!GetParam().peers) {
    EXPECT_ERROR(run(*a, Op::Write, local->all(), remote->all(), "b"), ErrorCode::Unsupported,
                 "'b'");
    EXPECT_EQ(remote->mismatch(0), SIZE_MAX) << "bytes reached a peer it says it cannot";
    return;
  }
  const std::optional<std::string> notif =
      GetParam().notifies_peers ? std::optional<std::string>("to-b") : std::nullopt;
  ASSERT_TRUE(run(*a, Op::Write, local->all(), remote->all(), "b", notif));
  EXPECT_EQ(remote->mismatch(11), SIZE_MAX);
  if (notif) {
    EXPECT_TRUE(got_notif(*b, Notification{"a", "to-b"}));
  }
  local->fill(0);
  ASSERT_TRUE(run(*a, Op::Read, local->all(), remote->all(), "b"));
  EXPECT_EQ(local->mismatch(11), SIZE_MAX);
}

TEST_P(BackendConformance, DescriptorsOutsideRegisteredMemoryAreRefused) {
  SET_UP_OR_SKIP();
  Agent* a = a_.get();
  Memory* local = local_.get();
  Memory* remote = remote_.get();
  EXPECT_ERROR(a->create_request(Op::Write, local->descs(4096, kLen), remote->descs(0, kLen), "a"),
               ErrorCode::OutOfBounds, "is not inside memory registered with agent 'a'");
  EXPECT_ERROR(a->create_request(Op::Write, local->descs(0, kLen), remote->descs(4096, kLen), "a"),
               ErrorCode::OutOfBounds, "is not inside memory agent 'a' has registered");
}

// Moved from posix_backend_test (DestroyingARequestInFlightIsSafe), for every backend.
TEST_P(BackendConformance, RequestsDestroyedInFlightLeaveTheAgentUsable) {
  SET_UP_OR_SKIP();
  Agent* a = a_.get();
  Memory* local = local_.get();
  Memory* remote = remote_.get();
  const std::optional<std::string> notif =
      GetParam().notifies ? std::optional<std::string>("a") : std::nullopt;
  for (int i = 0; i < 20; ++i) {
    auto r = a->create_request(Op::Write, local->all(), remote->all(), "a", notif);
    ASSERT_TRUE(r) << r.error().to_string();
    ASSERT_TRUE((*r)->post());
  }  // each destroyed while queued, running or done
  local->fill(13);
  ASSERT_TRUE(run(*a, Op::Write, local->all(), remote->all(), "a"));
  EXPECT_EQ(remote->mismatch(13), SIZE_MAX);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConformance, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<BackendCase>& info) {
                           return std::string(info.param.label ? info.param.label
                                                               : info.param.name);
                         });

}  // namespace
}  // namespace kvbm::xfer
