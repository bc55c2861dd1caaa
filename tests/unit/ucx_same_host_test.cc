// The UCX backend's same-host pieces (src/xfer/backends/ucx/same_host.h) and the registry
// of shareable memory (src/storage/shared_memory.h), within one process: this process
// stands in for its own peer (CMA and /proc/<pid>/fd work on oneself). The two-process
// paths are in tests/integration/two_agents_test.cc.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "kvbm/storage.h"
#include "storage/shared_memory.h"
#include "support/test_support.h"
#include "xfer/backends/ucx/same_host.h"

namespace kvbm::xfer::detail {
namespace {

using kvbm::detail::find_shared_memory;

TEST(SharedMemoryRegistry, PrivateSystemStorageIsNotShareable) {
  auto s = SystemAllocator().allocate(1 << 20);
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->shareable());
  EXPECT_FALSE(find_shared_memory(s->addr(), 4096).has_value());
}

TEST(SharedMemoryRegistry, FindsRangesInsideShareableSystemStorageOnly) {
  auto s = SystemAllocator(SystemMemory::Shareable).allocate(1 << 20);
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_TRUE(s->shareable());
  for (size_t i = 0; i < s->size(); i += 4096) ASSERT_EQ(static_cast<char*>(s->data())[i], 0);
  auto f = find_shared_memory(s->addr() + 4096, 8192);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->offset, 4096u);
  // The fd is a duplicate: ours to close, and it names the storage's pages.
  ASSERT_GE(f->fd, 0);
  static_cast<char*>(s->data())[4096] = 'k';
  char c = 0;
  EXPECT_EQ(::pread(f->fd, &c, 1, 4096), 1);
  EXPECT_EQ(c, 'k');
  ::close(f->fd);
  EXPECT_FALSE(find_shared_memory(s->addr() + (1 << 20) - 10, 20).has_value()) << "past its end";
  EXPECT_FALSE(find_shared_memory(s->addr() - 4096, 8192).has_value()) << "before its start";
  int on_stack = 0;
  EXPECT_FALSE(find_shared_memory(reinterpret_cast<uint64_t>(&on_stack), 4).has_value());
  uint64_t addr = 0;
  {
    auto gone = SystemAllocator(SystemMemory::Shareable).allocate(8192);
    ASSERT_TRUE(gone);
    addr = gone->addr();
    auto found = find_shared_memory(addr, 8192);
    ASSERT_TRUE(found.has_value());
    ::close(found->fd);
  }
  EXPECT_FALSE(find_shared_memory(addr, 8192).has_value()) << "a destroyed storage";
}

TEST(SameHostMode, ParsesTheThreeModes) {
  EXPECT_EQ(*parse_same_host_mode("auto"), SameHostMode::Auto);
  EXPECT_EQ(*parse_same_host_mode("cma"), SameHostMode::Cma);
  EXPECT_EQ(*parse_same_host_mode("off"), SameHostMode::Off);
  EXPECT_ERROR(parse_same_host_mode("fast"), ErrorCode::InvalidArgument, "'fast'");
}

TEST(RegionInfo, RoundTripsWithAndWithoutAFile) {
  DramRegionInfo plain{std::nullopt, "rkey-bytes"};
  auto back = decode_region_info(encode_region_info(plain));
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_FALSE(back->file.has_value());
  EXPECT_EQ(back->rkey, "rkey-bytes");

  DramRegionInfo with{SharedFileRef{7, 11, 13, 4096}, std::string("\0k\1", 3)};
  back = decode_region_info(encode_region_info(with));
  ASSERT_TRUE(back) << back.error().to_string();
  ASSERT_TRUE(back->file.has_value());
  EXPECT_EQ(back->file->fd, 7);
  EXPECT_EQ(back->file->dev, 11u);
  EXPECT_EQ(back->file->ino, 13u);
  EXPECT_EQ(back->file->offset, 4096u);
  EXPECT_EQ(back->rkey, std::string("\0k\1", 3));
}

TEST(RegionInfo, RejectsMalformedBytes) {
  const std::string good = encode_region_info({SharedFileRef{7, 11, 13, 0}, "key"});
  EXPECT_ERROR(decode_region_info(""), ErrorCode::InvalidArgument, "'KVU2'");
  EXPECT_ERROR(decode_region_info("KVU1\0key"), ErrorCode::InvalidArgument, "'KVU2'");
  EXPECT_ERROR(decode_region_info(std::string("KVU2\x04key", 8)), ErrorCode::InvalidArgument,
               "unknown flags 4");
  EXPECT_ERROR(decode_region_info(good.substr(0, 20)), ErrorCode::InvalidArgument, "cut short");
  EXPECT_ERROR(decode_region_info(std::string("KVU2\0", 5)), ErrorCode::InvalidArgument,
               "empty UCX remote key");
  EXPECT_ERROR(decode_region_info(good.substr(0, good.size() - 3)), ErrorCode::InvalidArgument,
               "empty UCX remote key");
  std::string bad_fd = good;
  bad_fd[5] = bad_fd[6] = bad_fd[7] = bad_fd[8] = '\xff';
  EXPECT_ERROR(decode_region_info(bad_fd), ErrorCode::InvalidArgument, "out of range");
}

TEST(SameHostPeer, ReachesThisProcessAndRefusesImpostors) {
  SameHostSelf self;
  std::string why;
  auto peer = SameHostPeer::reach(self.line(), &why);
  ASSERT_NE(peer, nullptr) << why;
  EXPECT_EQ(peer->pid(), ::getpid());
  EXPECT_FALSE(peer->exited());

  // Same pid and address, another token: not the process that published the line.
  std::string other = self.line();
  other.back() = other.back() == '0' ? '1' : '0';
  EXPECT_EQ(SameHostPeer::reach(other, &why), nullptr);
  EXPECT_NE(why.find("token differs"), std::string::npos) << why;

  for (const char* bad : {"", "12", "12 ab", "x ab 0123456789abcdef0123456789abcdef",
                          "-4 ab 0123456789abcdef0123456789abcdef",
                          "12 zz 0123456789abcdef0123456789abcdef", "12 ab 0123"}) {
    why.clear();
    EXPECT_EQ(SameHostPeer::reach(bad, &why), nullptr) << bad;
    EXPECT_EQ(why, "malformed same-host line") << bad;
  }
}

TEST(SameHostPeer, CopiesManyDescriptorsThroughCma) {
  SameHostSelf self;
  std::string why;
  auto peer = SameHostPeer::reach(self.line(), &why);
  ASSERT_NE(peer, nullptr) << why;
  // More descriptors than one system call takes (IOV_MAX), of uneven lengths, with the
  // remote side split differently from the local one.
  constexpr size_t kCount = 2500;
  std::vector<char> src(kCount * 7 + 13), dst(src.size());
  testing::fill_pattern(src.data(), src.size(), 5);
  std::vector<iovec> local, remote;
  size_t off = 0;
  for (size_t i = 0; i < kCount; ++i) {
    const size_t len = 1 + i % 13;
    if (off + len > src.size()) break;
    local.push_back({dst.data() + off, len});
    remote.push_back({src.data() + off, len});
    off += len;
  }
  ASSERT_TRUE(peer->copy(Op::Read, local, remote));
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), off), 0);
  std::fill(dst.begin(), dst.end(), 0);
  ASSERT_TRUE(peer->copy(Op::Write, remote, local));  // our src -> "peer" dst
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), off), 0);

  // A peer range that is not mapped: an error that names the peer, not a crash.
  void* gone = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(gone, MAP_FAILED);
  ::munmap(gone, 4096);
  std::vector<iovec> l1{{dst.data(), 64}}, r1{{gone, 64}};
  EXPECT_ERROR(peer->copy(Op::Read, l1, r1), ErrorCode::Remote, "is not mapped");
}

TEST(SharedMapping, MapsThePublishedFileAndChecksItsIdentity) {
  auto s = SystemAllocator(SystemMemory::Shareable).allocate(1 << 20);
  ASSERT_TRUE(s);
  SameHostSelf self;
  std::string why;
  auto peer = SameHostPeer::reach(self.line(), &why);
  ASSERT_NE(peer, nullptr) << why;
  auto shared = find_shared_memory(s->addr() + 8192 + 5, 1000);
  ASSERT_TRUE(shared.has_value());
  auto ref = describe_shared_file(shared->fd, shared->offset);
  ASSERT_TRUE(ref) << ref.error().to_string();
  auto m = SharedMapping::map(*peer, *ref, 1000);
  ASSERT_TRUE(m) << m.error().to_string();
  std::memcpy((*m)->at(0), "mapped", 6);  // an unaligned offset inside a page
  EXPECT_EQ(std::memcmp(static_cast<char*>(s->data()) + 8192 + 5, "mapped", 6), 0);

  SharedFileRef wrong = *ref;
  ++wrong.ino;
  EXPECT_ERROR(SharedMapping::map(*peer, wrong, 1000), ErrorCode::Remote, "not the file");
  SharedFileRef too_long = *ref;
  EXPECT_ERROR(SharedMapping::map(*peer, too_long, 1 << 20), ErrorCode::Remote, "too short");
  SharedFileRef closed = *ref;
  closed.fd = 1 << 20;
  EXPECT_ERROR(SharedMapping::map(*peer, closed, 1000), ErrorCode::Remote, "open /proc/");
  ::close(shared->fd);
}

}  // namespace
}  // namespace kvbm::xfer::detail
