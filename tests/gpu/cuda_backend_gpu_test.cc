// VRAM through the agent on a real GPU; every test skips, with CUDA's reason, without one.
//   GpuXferLocal.*       one agent: VRAM<->VRAM, VRAM<->pinned, VRAM<->plain DRAM
//   GpuXferBadInput.*    host pointer as VRAM, freed region, wrong ordinal, past the allocation
//   GpuXferRemote.*      remote-layer registration of Device and Pinned storages
//   Gpu/TwoProcesses.*   this process and tests/gpu/gpu_peer on one GPU, through CUDA IPC
//                        (Ipc) and through the staged path over UCX forced on (Staged):
//                        READ and WRITE, notifications after the data, every byte checked
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/child_process.h"
#include "support/test_support.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::xfer {
namespace {

#if KVBM_HAVE_CUDA

using namespace std::chrono_literals;
using testing::ChildProcess;

// Fills device memory with the pattern of `seed` (through a host copy).
void fill_device(void* dev, size_t len, uint64_t seed) {
  std::vector<char> host(len);
  testing::fill_pattern(host.data(), len, seed);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), len, cudaMemcpyHostToDevice), cudaSuccess);
}

// The first byte of device memory [dev, dev+len) that differs from the pattern of `seed`
// at position `poff`, or SIZE_MAX.
size_t device_mismatch(const void* dev, size_t len, uint64_t seed, size_t poff) {
  std::vector<char> host(len);
  if (cudaMemcpy(host.data(), dev, len, cudaMemcpyDeviceToHost) != cudaSuccess) return 0;
  return testing::find_pattern_mismatch(host.data(), len, seed, poff);
}

// "" when [buf + at, + len) holds the pattern of `seed` from position `poff` and the bytes
// just before and after it are still zero; else what is wrong.
std::string landed(const char* buf, size_t at, size_t len, uint64_t seed, size_t poff) {
  if (size_t b = testing::find_pattern_mismatch(buf + at, len, seed, poff); b != SIZE_MAX) {
    return "byte " + std::to_string(b) + " differs";
  }
  if (buf[at - 1] != 0) return "the byte before was written";
  if (buf[at + len] != 0) return "the byte after was written";
  return "";
}

Status run(Agent& a, Op op, const DescList& l, const DescList& r, const std::string& peer,
           std::optional<std::string> notif = {}) {
  auto req = a.create_request(op, l, r, peer, std::move(notif));
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(30s);
}

bool wait_notif(Agent& a, const Notification& want) {
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    for (auto& n : a.get_notifs()) {
      if (n == want) return true;
    }
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

// Descriptor sizes from 1 byte to 8 MiB at odd offsets, laid out without overlap.
std::vector<std::pair<size_t, size_t>> layout(size_t shift) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t off = shift;
  for (size_t s : {size_t{1}, size_t{7}, size_t{4096}, size_t{65537}, size_t{1} << 20,
                   (size_t{3} << 20) + 3, size_t{8} << 20}) {
    out.emplace_back(off, s);
    off += s + 13;
  }
  return out;
}

DescList descs(MemType t, uint64_t base, const std::vector<std::pair<size_t, size_t>>& l,
               uint64_t dev = 0) {
  DescList d(t);
  for (auto [off, len] : l) d.add(base + off, len, dev);
  return d;
}

constexpr size_t kBytes = 32 << 20;

class GpuXferLocal : public ::testing::Test {
 protected:
  void SetUp() override {
    KVBM_REQUIRE_GPU();
    auto ag = Agent::create("solo");
    ASSERT_TRUE(ag.ok()) << ag.error().to_string();
    agent = std::move(*ag);
    ASSERT_EQ(agent->backends(), (std::vector<std::string>{"UCX", "POSIX", "CUDA"}));
    auto make_dev = [] {
      auto d = DeviceAllocator(0).allocate(kBytes);
      EXPECT_TRUE(d.ok()) << d.error().to_string();
      return std::move(*d);
    };
    a.emplace(make_dev());
    b.emplace(make_dev());
    auto p = PinnedAllocator().allocate(kBytes);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    pinned.emplace(std::move(*p));
    auto s = SystemAllocator().allocate(kBytes);
    ASSERT_TRUE(s.ok());
    plain.emplace(std::move(*s));
    for (RegisterableStorage* st :
         std::initializer_list<RegisterableStorage*>{&*a, &*b, &*pinned, &*plain}) {
      auto r = register_with_agent(*st, *agent);
      ASSERT_TRUE(r.ok()) << st->type().to_string() << ": " << r.error().to_string();
    }
  }
  void TearDown() override {
    a.reset();
    b.reset();
    pinned.reset();
    plain.reset();
  }
  DescList vram(const DeviceStorage& d, size_t off, size_t len) const {
    return DescList(MemType::Vram, {{d.addr() + off, len, 0}});
  }
  DescList dram(const Storage& d, size_t off, size_t len) const {
    return DescList(MemType::Dram, {{d.addr() + off, len, 0}});
  }

  std::unique_ptr<Agent> agent;  // declared first: destroyed after the storages
  std::optional<DeviceStorage> a, b;
  std::optional<PinnedStorage> pinned;
  std::optional<SystemStorage> plain;
};

TEST_F(GpuXferLocal, PlainToVramToVramToPinnedWithNotification) {
  testing::fill_pattern(plain->data(), kBytes, 1);
  // WRITE pushes local bytes to the "remote" side, here this agent's own memory.
  ASSERT_TRUE(
      run(*agent, Op::Write, dram(*plain, 0, kBytes), vram(*a, 0, kBytes), "solo", "n1").ok());
  EXPECT_TRUE(wait_notif(*agent, {"solo", "n1"})) << "notification of a CUDA request";
  EXPECT_EQ(device_mismatch(a->data(), kBytes, 1, 0), SIZE_MAX);
  auto st = run(*agent, Op::Write, vram(*a, 0, kBytes), vram(*b, 0, kBytes), "solo");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(device_mismatch(b->data(), kBytes, 1, 0), SIZE_MAX);
  // READ pulls: local pinned <- VRAM.
  st = run(*agent, Op::Read, dram(*pinned, 0, kBytes), vram(*b, 0, kBytes), "solo");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(testing::find_pattern_mismatch(pinned->data(), kBytes, 1, 0), SIZE_MAX);
}

// Many VRAM -> VRAM descriptors (1 byte to 8 MiB, odd offsets) go as one launch of the
// copy kernel, every byte in place and nothing between the descriptors touched.
TEST_F(GpuXferLocal, ScatteredVramToVramInOneKernelLaunch) {
  const auto from = layout(5), to = layout(4099);
  fill_device(a->data(), kBytes, 21);
  ASSERT_EQ(cudaMemset(b->data(), 0, kBytes), cudaSuccess);
  auto st = run(*agent, Op::Write, descs(MemType::Vram, a->addr(), from),
                descs(MemType::Vram, b->addr(), to), "solo");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  std::vector<char> back(kBytes);
  ASSERT_EQ(cudaMemcpy(back.data(), b->data(), kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
  size_t end = 0;
  for (size_t i = 0; i < from.size(); ++i) {
    EXPECT_EQ(
        testing::find_pattern_mismatch(back.data() + to[i].first, to[i].second, 21, from[i].first),
        SIZE_MAX)
        << "descriptor " << i << " of " << to[i].second << " bytes";
    end = to[i].first + to[i].second;
  }
  EXPECT_EQ(back[to[0].first - 1], 0) << "a byte before the first descriptor";
  EXPECT_EQ(back[end], 0) << "a byte after the last descriptor";
  EXPECT_EQ(back[to[1].first - 1], 0) << "a byte between descriptors";
}

// Many small descriptors between VRAM and host memory, both directions, the host side
// local and remote: with pinned memory one copy kernel launch reads or writes it over PCIe,
// with plain memory (not mapped) one cudaMemcpyBatchAsync; the same bytes land either way,
// and none outside the descriptors.
TEST_F(GpuXferLocal, SmallScatteredHostCopiesPinnedAndPlain) {
  // 1 byte to 32 KiB + 5 (average about 9 KiB: the kernel's range), at odd offsets.
  auto small = [](size_t shift) {
    std::vector<std::pair<size_t, size_t>> out;
    size_t off = shift;
    for (int round = 0; round < 8; ++round) {
      for (size_t len : {size_t{1}, size_t{7}, size_t{16}, size_t{100}, size_t{4096}, size_t{4099},
                         size_t{16384}, size_t{16387}, size_t{32773}}) {
        out.emplace_back(off, len);
        off += len + 13;
      }
    }
    return out;
  };
  const auto host_l = small(3), vram_l = small(4101);
  std::vector<char> back(kBytes);
  auto check_host = [&](const char* host, uint64_t seed, const char* what) {
    for (size_t i = 0; i < host_l.size(); ++i) {
      EXPECT_EQ(testing::find_pattern_mismatch(host + host_l[i].first, host_l[i].second, seed,
                                               vram_l[i].first),
                SIZE_MAX)
          << what << ": descriptor " << i << " of " << host_l[i].second << " bytes";
      EXPECT_EQ(host[host_l[i].first + host_l[i].second], 0) << what << ": byte after " << i;
    }
    EXPECT_EQ(host[host_l[0].first - 1], 0) << what << ": byte before the first";
  };
  auto check_vram = [&](uint64_t seed, const char* what) {
    ASSERT_EQ(cudaMemcpy(back.data(), a->data(), kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < vram_l.size(); ++i) {
      EXPECT_EQ(testing::find_pattern_mismatch(back.data() + vram_l[i].first, vram_l[i].second,
                                               seed, host_l[i].first),
                SIZE_MAX)
          << what << ": descriptor " << i << " of " << vram_l[i].second << " bytes";
      EXPECT_EQ(back[vram_l[i].first + vram_l[i].second], 0) << what << ": byte after " << i;
    }
    EXPECT_EQ(back[vram_l[0].first - 1], 0) << what << ": byte before the first";
  };
  uint64_t seed = 30;
  for (Storage* host : std::initializer_list<Storage*>{&*pinned, &*plain}) {
    const std::string kind = host == &*pinned ? "pinned" : "plain";
    char* h = static_cast<char*>(host->data());
    const DescList hd = descs(MemType::Dram, host->addr(), host_l);
    const DescList vd = descs(MemType::Vram, a->addr(), vram_l);
    // host -> VRAM: WRITE from local host memory, then READ from "remote" host memory.
    for (Op op : {Op::Write, Op::Read}) {
      testing::fill_pattern(h, kBytes, ++seed);
      ASSERT_EQ(cudaMemset(a->data(), 0, kBytes), cudaSuccess);
      auto st = op == Op::Write ? run(*agent, op, hd, vd, "solo") : run(*agent, op, vd, hd, "solo");
      ASSERT_TRUE(st.ok()) << kind << ": " << st.error().to_string();
      check_vram(seed, (kind + " -> VRAM by " + to_string(op)).c_str());
    }
    // VRAM -> host: READ into local host memory, then WRITE to "remote" host memory.
    for (Op op : {Op::Read, Op::Write}) {
      fill_device(a->data(), kBytes, ++seed);
      std::memset(h, 0, kBytes);
      auto st = op == Op::Read ? run(*agent, op, hd, vd, "solo") : run(*agent, op, vd, hd, "solo");
      ASSERT_TRUE(st.ok()) << kind << ": " << st.error().to_string();
      check_host(h, seed, (kind + " <- VRAM by " + to_string(op)).c_str());
    }
  }
}

// One descriptor between VRAM and host memory, pinned or plain (a cudaMemcpyAsync): every
// byte lands, none next to it.
TEST_F(GpuXferLocal, SingleHostCopiesAtOddOffsets) {
  std::vector<char> back(kBytes);
  uint64_t seed = 50;
  for (Storage* host : std::initializer_list<Storage*>{&*pinned, &*plain}) {
    char* h = static_cast<char*>(host->data());
    for (size_t len : {size_t{1}, size_t{4099}, (size_t{1} << 20) + 3, size_t{2} << 20}) {
      const size_t hoff = 4093, voff = 8191;
      const std::string what = std::string(host == &*pinned ? "pinned" : "plain") + ", " +
                               std::to_string(len) + " bytes";
      testing::fill_pattern(h, kBytes, ++seed);
      ASSERT_EQ(cudaMemset(a->data(), 0, kBytes), cudaSuccess);
      auto st = run(*agent, Op::Write, dram(*host, hoff, len), vram(*a, voff, len), "solo");
      ASSERT_TRUE(st.ok()) << what << ": " << st.error().to_string();
      ASSERT_EQ(cudaMemcpy(back.data(), a->data(), kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(landed(back.data(), voff, len, seed, hoff), "") << what << " -> VRAM";

      fill_device(a->data(), kBytes, ++seed);
      std::memset(h, 0, kBytes);
      st = run(*agent, Op::Read, dram(*host, hoff, len), vram(*a, voff, len), "solo");
      ASSERT_TRUE(st.ok()) << what << ": " << st.error().to_string();
      EXPECT_EQ(landed(h, hoff, len, seed, voff), "") << what << " <- VRAM";
    }
  }
}

// A small host -> VRAM copy posted while a larger request is still in progress, from
// pinned and from plain memory, at odd offsets and sizes: both land whole, and nothing
// around the small one is touched.
TEST_F(GpuXferLocal, SmallHostToVramCopiesBehindQueuedOnes) {
  std::vector<char> back(kBytes);
  uint64_t seed = 90;
  for (Storage* host : std::initializer_list<Storage*>{&*pinned, &*plain}) {
    for (size_t len : {size_t{1}, size_t{4099}, size_t{1} << 20}) {
      const size_t hoff = 4093, voff = (8 << 20) + 8191;
      const std::string what = std::string(host == &*pinned ? "pinned" : "plain") + ", " +
                               std::to_string(len) + " bytes";
      testing::fill_pattern(host->data(), kBytes, ++seed);
      ASSERT_EQ(cudaMemset(a->data(), 0, kBytes), cudaSuccess);
      auto ahead =
          agent->create_request(Op::Write, dram(*host, 0, 4 << 20), vram(*a, 0, 4 << 20), "solo");
      auto small =
          agent->create_request(Op::Write, dram(*host, hoff, len), vram(*a, voff, len), "solo");
      ASSERT_TRUE(ahead.ok() && small.ok()) << what;
      ASSERT_TRUE((*ahead)->post().ok()) << what;
      auto st = (*small)->post();
      ASSERT_TRUE(st.ok()) << what << ": " << st.error().to_string();
      ASSERT_TRUE((*small)->wait(30s).ok()) << what;
      ASSERT_TRUE((*ahead)->wait(30s).ok()) << what;
      ASSERT_EQ(cudaMemcpy(back.data(), a->data(), kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(landed(back.data(), voff, len, seed, hoff), "") << what;
      EXPECT_EQ(testing::find_pattern_mismatch(back.data(), 4 << 20, seed, 0), SIZE_MAX)
          << what << ": the request ahead";
    }
  }
}

// One VRAM -> VRAM descriptor of up to 4 MiB goes as one launch of the copy kernel with the
// copy passed by value, larger ones as a cudaMemcpyAsync: every size, aligned or not, the
// two ends at the same or at different alignments, lands whole and touches nothing around.
TEST_F(GpuXferLocal, SingleVramCopiesAtOddOffsets) {
  std::vector<char> back(kBytes);
  uint64_t seed = 70;
  const std::pair<size_t, size_t> offsets[] = {{0, 4096}, {48, 4144}, {5, 4099}};
  for (auto [from, to] : offsets) {
    for (size_t len : {size_t{1}, size_t{4099}, size_t{32} << 10, (size_t{1} << 20) + 3,
                       (size_t{4} << 20), (size_t{8} << 20) + 16}) {
      const std::string what =
          std::to_string(len) + " bytes from " + std::to_string(from) + " to " + std::to_string(to);
      fill_device(a->data(), kBytes, ++seed);
      ASSERT_EQ(cudaMemset(b->data(), 0, kBytes), cudaSuccess);
      auto st = run(*agent, Op::Write, vram(*a, from, len), vram(*b, to, len), "solo");
      ASSERT_TRUE(st.ok()) << what << ": " << st.error().to_string();
      ASSERT_EQ(cudaMemcpy(back.data(), b->data(), kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_EQ(landed(back.data(), to, len, seed, from), "") << what;
    }
  }
}

// batch=0, kernel=0: a cudaMemcpyAsync per descriptor instead of one cudaMemcpyBatchAsync
// (host sides) or one kernel launch (VRAM to VRAM); the same bytes land.
TEST_F(GpuXferLocal, ScatteredDescriptorsOneCopyCallEach) {
  AgentConfig config;
  config.backends = {};
  config.add_cuda_if_gpu = false;
  auto solo = Agent::create("one-by-one", config);
  ASSERT_TRUE(solo.ok()) << solo.error().to_string();
  ASSERT_TRUE((*solo)->create_backend("CUDA", {{"batch", "0"}, {"kernel", "0"}}).ok());
  auto va = (*solo)->register_memory(vram(*a, 0, kBytes));
  auto vb = (*solo)->register_memory(vram(*b, 0, kBytes));
  auto vp = (*solo)->register_memory(dram(*pinned, 0, kBytes));
  ASSERT_TRUE(va.ok() && vb.ok() && vp.ok());
  const auto l = layout(3);
  testing::fill_pattern(pinned->data(), kBytes, 4);
  auto st = run(**solo, Op::Read, descs(MemType::Vram, a->addr(), l),
                descs(MemType::Dram, pinned->addr(), l), "one-by-one");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  for (auto [off, len] : l) {
    EXPECT_EQ(device_mismatch(static_cast<char*>(a->data()) + off, len, 4, off), SIZE_MAX)
        << "segment at " << off;
  }
  st = run(**solo, Op::Write, descs(MemType::Vram, a->addr(), l),
           descs(MemType::Vram, b->addr(), l), "one-by-one");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  for (auto [off, len] : l) {
    EXPECT_EQ(device_mismatch(static_cast<char*>(b->data()) + off, len, 4, off), SIZE_MAX)
        << "VRAM segment at " << off;
  }
}

TEST_F(GpuXferLocal, ScatteredDescriptorsBothWays) {
  const auto l = layout(5);
  fill_device(a->data(), kBytes, 7);
  std::memset(plain->data(), 0, kBytes);
  // VRAM (local) -> plain DRAM (remote), many descriptors at odd offsets.
  auto st = run(*agent, Op::Write, descs(MemType::Vram, a->addr(), l),
                descs(MemType::Dram, plain->addr(), l), "solo");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  for (auto [off, len] : l) {
    EXPECT_EQ(testing::find_pattern_mismatch(static_cast<char*>(plain->data()) + off, len, 7, off),
              SIZE_MAX)
        << "segment at " << off << " of " << len;
  }
  // plain DRAM (local) <- VRAM (remote) by READ, and VRAM (local) <- pinned (remote).
  testing::fill_pattern(pinned->data(), kBytes, 9);
  st = run(*agent, Op::Read, descs(MemType::Vram, b->addr(), l),
           descs(MemType::Dram, pinned->addr(), l), "solo");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  for (auto [off, len] : l) {
    EXPECT_EQ(device_mismatch(static_cast<char*>(b->data()) + off, len, 9, off), SIZE_MAX)
        << "segment at " << off;
  }
  // A request can be posted again once done.
  auto req = agent->create_request(Op::Write, vram(*a, 0, 4096), vram(*b, 0, 4096), "solo");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*req)->post().ok());
    ASSERT_TRUE((*req)->wait(30s).ok());
  }
  EXPECT_EQ(device_mismatch(b->data(), 4096, 7, 0), SIZE_MAX);
}

TEST_F(GpuXferLocal, OutOfBoundsAndWrongDeviceDescriptorsAreRejected) {
  EXPECT_ERROR(agent->create_request(Op::Write, vram(*a, kBytes - 8, 16), vram(*b, 0, 16), "solo"),
               ErrorCode::OutOfBounds, "local descriptor 0");
  EXPECT_ERROR(agent->create_request(Op::Write, vram(*a, 0, 16),
                                     DescList(MemType::Vram, {{b->addr(), 16, 1}}), "solo"),
               ErrorCode::OutOfBounds, "dev 1");
}

TEST(GpuXferBadInput, RegistrationNamesTheProblem) {
  KVBM_REQUIRE_GPU();
  auto ag = Agent::create("bad");
  ASSERT_TRUE(ag.ok()) << ag.error().to_string();
  auto& agent = **ag;
  std::vector<char> host(1 << 16);
  EXPECT_ERROR(agent.register_memory(DescList(MemType::Vram, {{uint64_t(host.data()), 4096, 0}})),
               ErrorCode::RegistrationFailed, "not device memory");
  auto pinned = PinnedAllocator().allocate(1 << 16);
  ASSERT_TRUE(pinned.ok());
  EXPECT_ERROR(agent.register_memory(DescList(MemType::Vram, {{pinned->addr(), 4096, 0}})),
               ErrorCode::RegistrationFailed, "pinned host memory");
  uint64_t freed = 0;
  {
    auto d = DeviceAllocator(0).allocate(1 << 20);
    ASSERT_TRUE(d.ok());
    freed = d->addr();
  }
  EXPECT_ERROR(agent.register_memory(DescList(MemType::Vram, {{freed, 4096, 0}})),
               ErrorCode::RegistrationFailed, "not device memory");
  auto d = DeviceAllocator(0).allocate(1 << 20);
  ASSERT_TRUE(d.ok());
  const int count = *cuda_device_count();
  EXPECT_ERROR(agent.register_memory(
                   DescList(MemType::Vram, {{d->addr(), 4096, static_cast<uint64_t>(count)}})),
               ErrorCode::RegistrationFailed, "does not exist");
  if (count > 1) {
    EXPECT_ERROR(agent.register_memory(DescList(MemType::Vram, {{d->addr(), 4096, 1}})),
                 ErrorCode::RegistrationFailed, "lives on device 0, not on device 1");
  }
  EXPECT_ERROR(agent.register_memory(DescList(MemType::Vram, {{d->addr(), 64 << 20, 0}})),
               ErrorCode::RegistrationFailed, "extends past its allocation");
  // And the good case, a sub-range of the allocation.
  auto ok = agent.register_memory(DescList(MemType::Vram, {{d->addr() + 4096, 8192, 0}}));
  EXPECT_TRUE(ok.ok()) << ok.error().to_string();
}

TEST(GpuXferBadInput, DroppedRegionAndMissingNotifier) {
  KVBM_REQUIRE_GPU();
  // Only the CUDA backend: it moves data but cannot carry a notification by itself.
  AgentConfig config;
  config.backends = {};
  auto ag = Agent::create("cuda-only", config);
  ASSERT_TRUE(ag.ok()) << ag.error().to_string();
  ASSERT_EQ((*ag)->backends(), std::vector<std::string>{"CUDA"});
  auto a = DeviceAllocator(0).allocate(1 << 20);
  ASSERT_TRUE(a.ok());
  std::optional<DeviceStorage> b(*DeviceAllocator(0).allocate(1 << 20));
  ASSERT_TRUE(register_with_agent(*a, **ag).ok());
  ASSERT_TRUE(register_with_agent(*b, **ag).ok());
  const DescList la(MemType::Vram, {{a->addr(), 4096, 0}});
  const DescList lb(MemType::Vram, {{b->addr(), 4096, 0}});
  EXPECT_TRUE(run(**ag, Op::Write, la, lb, "cuda-only").ok());
  EXPECT_ERROR((*ag)->create_request(Op::Write, la, lb, "cuda-only", std::string("n")),
               ErrorCode::Unsupported, "cannot deliver notifications");
  // A region freed (and so deregistered) is no longer a valid target.
  const uint64_t gone = b->addr();
  b.reset();
  EXPECT_ERROR(
      (*ag)->create_request(Op::Write, la, DescList(MemType::Vram, {{gone, 4096, 0}}), "cuda-only"),
      ErrorCode::OutOfBounds, "remote descriptor 0");
}

TEST(GpuXferRemote, DeviceAndPinnedStoragesCarryTheirDeviceIds) {
  KVBM_REQUIRE_GPU();
  auto ag = Agent::create("reg");
  ASSERT_TRUE(ag.ok()) << ag.error().to_string();
  const int last = *cuda_device_count() - 1;  // the seed's rule on the highest ordinal there is
  auto d = DeviceAllocator(last).allocate(1 << 20);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  ASSERT_TRUE(register_with_agent(*d, **ag).ok());
  auto rd = remote_descriptor_of(*d);
  ASSERT_TRUE(rd.ok()) << rd.error().to_string();
  EXPECT_EQ(rd->agent_name(), "reg");
  EXPECT_EQ(rd->storage().mem_type(), MemType::Vram);
  EXPECT_EQ(rd->storage().device_id(), static_cast<uint64_t>(last));
  EXPECT_EQ(rd->to_desc_list(), DescList(MemType::Vram, {{d->addr(), 1 << 20, uint64_t(last)}}));
  EXPECT_ERROR(register_with_agent(*d, **ag), ErrorCode::AlreadyRegistered, "registered");

  auto p = PinnedAllocator().allocate(1 << 20);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(register_with_agent(*p, **ag).ok());
  auto rp = remote_descriptor_of(*p);
  ASSERT_TRUE(rp.ok());
  EXPECT_EQ(rp->storage().mem_type(), MemType::Dram);
  EXPECT_EQ(rp->storage().device_id(), 0u);
  // Deregistered, the memory can be registered again.
  ASSERT_TRUE(deregister_from_agent(*d).ok());
  EXPECT_FALSE(is_registered_with_agent(*d));
  EXPECT_TRUE(register_with_agent(*d, **ag).ok());
}

// ---- two processes --------------------------------------------------------------------

struct Path {
  const char* name;
  bool staged;
};
void PrintTo(const Path& p, std::ostream* os) {
  *os << p.name;
}

class TwoProcesses : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    KVBM_REQUIRE_GPU();
    std::vector<std::string> argv = {testing::helper_path("gpu_peer"), "peer",
                                     std::to_string(kBytes), "11"};
    if (GetParam().staged) argv.push_back("staged");
    peer = std::make_unique<ChildProcess>(argv);
    auto ready = peer->read_line();
    ASSERT_TRUE(ready && ready->rfind("READY ", 0) == 0)
        << "gpu_peer did not start: " << ready.value_or("<nothing>");
    std::istringstream in(ready->substr(6));
    in >> port >> peer_addr;

    AgentConfig config;
    if (GetParam().staged) config.add_cuda_if_gpu = false;
    auto a = Agent::create("initiator", config);
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    agent = std::move(*a);
    if (GetParam().staged) {
      // Small chunks and few buffers, so every transfer runs through the pipeline.
      auto st = agent->create_backend(
          "CUDA", {{"staged", "1"}, {"chunk_bytes", "1048576"}, {"bounce_buffers", "4"}});
      ASSERT_TRUE(st.ok()) << st.error().to_string();
    }
    auto d = DeviceAllocator(0).allocate(kBytes);
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    local.emplace(std::move(*d));
    fill_device(local->data(), kBytes, 21);
    auto h = SystemAllocator().allocate(kBytes);
    ASSERT_TRUE(h.ok());
    host.emplace(std::move(*h));
    testing::fill_pattern(host->data(), kBytes, 31);
    ASSERT_TRUE(register_with_agent(*local, *agent).ok());
    ASSERT_TRUE(register_with_agent(*host, *agent).ok());
    auto name = agent->fetch_remote_metadata("127.0.0.1", port);
    ASSERT_TRUE(name.ok()) << name.error().to_string();
  }
  void TearDown() override {
    if (peer) peer->send("quit");
    local.reset();
    host.reset();
  }
  std::string ask(const std::string& line) { return peer->ask(line).value_or("<no answer>"); }

  std::unique_ptr<ChildProcess> peer;
  uint16_t port = 0;
  uint64_t peer_addr = 0;
  std::unique_ptr<Agent> agent;
  std::optional<DeviceStorage> local;
  std::optional<SystemStorage> host;
};

TEST_P(TwoProcesses, WriteVramThenNotificationAfterTheData) {
  const auto l = layout(3);
  ASSERT_EQ(ask("zero"), "OK");
  auto st = run(*agent, Op::Write, descs(MemType::Vram, local->addr(), l),
                descs(MemType::Vram, peer_addr, l), "peer", "written");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  // The peer checks the largest segment the moment the notification arrives.
  auto [loff, llen] = l.back();
  EXPECT_EQ(ask("expect written 10000 " + std::to_string(loff) + " " + std::to_string(llen) +
                " 21 " + std::to_string(loff)),
            "OK");
  for (auto [off, len] : l) {
    EXPECT_EQ(ask("check " + std::to_string(off) + " " + std::to_string(len) + " 21 " +
                  std::to_string(off)),
              "OK")
        << "segment at " << off << " of " << len;
  }
  EXPECT_EQ(ask("notifs"), "NOTIFS");  // exactly one notification
}

TEST_P(TwoProcesses, ReadVramIntoVramAndHost) {
  ASSERT_EQ(ask("fill 33"), "OK");
  const auto l = layout(9);
  auto st = run(*agent, Op::Read, descs(MemType::Vram, local->addr(), l),
                descs(MemType::Vram, peer_addr, l), "peer");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  for (auto [off, len] : l) {
    EXPECT_EQ(device_mismatch(static_cast<char*>(local->data()) + off, len, 33, off), SIZE_MAX)
        << "segment at " << off << " of " << len;
  }
  // Into plain host memory, the whole buffer in one descriptor.
  st = run(*agent, Op::Read, DescList(MemType::Dram, {{host->addr(), kBytes, 0}}),
           DescList(MemType::Vram, {{peer_addr, kBytes, 0}}), "peer");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(testing::find_pattern_mismatch(host->data(), kBytes, 33, 0), SIZE_MAX);
}

TEST_P(TwoProcesses, WriteHostToPeerVramWithNotification) {
  ASSERT_EQ(ask("zero"), "OK");
  auto st = run(*agent, Op::Write, DescList(MemType::Dram, {{host->addr() + 1, kBytes - 2, 0}}),
                DescList(MemType::Vram, {{peer_addr + 1, kBytes - 2, 0}}), "peer", "h2d");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(ask("expect h2d 10000 1 " + std::to_string(kBytes - 2) + " 31 1"), "OK");
}

TEST_P(TwoProcesses, RepeatedRequestsAndReloadAfterInvalidate) {
  auto req = agent->create_request(
      Op::Write, DescList(MemType::Vram, {{local->addr(), 1 << 20, 0}}),
      DescList(MemType::Vram, {{peer_addr, 1 << 20, 0}}), "peer", std::string("again"));
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*req)->post().ok());
    auto st = (*req)->wait(30s);
    ASSERT_TRUE(st.ok()) << st.error().to_string();
    EXPECT_EQ(ask("expect again 10000 0 1048576 21 0"), "OK") << "round " << i;
  }
  // Forgetting the peer closes its IPC mappings; the old request fails cleanly.
  ASSERT_TRUE(agent->invalidate_remote("peer").ok());
  EXPECT_ERROR((*req)->post(), ErrorCode::Remote, "peer");
  EXPECT_ERROR(agent->create_request(Op::Write, DescList(MemType::Vram, {{local->addr(), 16, 0}}),
                                     DescList(MemType::Vram, {{peer_addr, 16, 0}}), "peer"),
               ErrorCode::NotFound, "'peer'");
  ASSERT_TRUE(agent->fetch_remote_metadata("127.0.0.1", port).ok());
  ASSERT_EQ(ask("zero"), "OK");
  auto st = run(*agent, Op::Write, DescList(MemType::Vram, {{local->addr(), 4096, 0}}),
                DescList(MemType::Vram, {{peer_addr, 4096, 0}}), "peer");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(ask("check 0 4096 21 0"), "OK");
  // Outside the peer's buffer: rejected before anything moves.
  EXPECT_ERROR(
      agent->create_request(Op::Read, DescList(MemType::Vram, {{local->addr(), 4096, 0}}),
                            DescList(MemType::Vram, {{peer_addr + kBytes - 8, 4096, 0}}), "peer"),
      ErrorCode::OutOfBounds, "remote descriptor 0");
}

INSTANTIATE_TEST_SUITE_P(Gpu, TwoProcesses,
                         ::testing::Values(Path{"Ipc", false}, Path{"Staged", true}),
                         [](const auto& info) { return std::string(info.param.name); });

#else

TEST(GpuXfer, BuiltWithoutCuda) {
  GTEST_SKIP() << "kvbm was built without CUDA";
}

#endif

}  // namespace
}  // namespace kvbm::xfer
