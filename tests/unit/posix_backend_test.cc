// The POSIX backend through the agent: this agent's own files (FILE regions) to and from
// its host memory, and the remote layer's Disk rule on top of it.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "kvbm/xfer/mem_type.h"
#include "support/agents.h"
#include "support/test_support.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::dram;
using testing::fill_pattern;
using testing::find_pattern_mismatch;
using testing::make_agent;
using testing::TempDir;

DescList file(int fd, uint64_t offset, uint64_t len) {
  return DescList(MemType::File, {Desc{offset, len, static_cast<uint64_t>(fd)}});
}

Status transfer(Agent& a, Op op, const DescList& local, const DescList& remote,
                std::optional<std::string> notif = std::nullopt) {
  auto req = a.create_request(op, local, remote, a.name(), std::move(notif));
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(10s);
}

// A file of `size` bytes in `dir`, opened O_DIRECT when the file system allows it.
int make_file(const std::filesystem::path& path, off_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0 && ::ftruncate(fd, size) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(PosixBackend, ParametersAreValidated) {
  AgentConfig none;
  none.backends = {};
  none.add_cuda_if_gpu = false;  // exactly the backends asked for, GPU or not
  auto a = make_agent("a", none);
  EXPECT_ERROR(a->create_backend("POSIX", {{"queue_depth", "0"}}), ErrorCode::InvalidArgument,
               "queue_depth 0");
  EXPECT_ERROR(a->create_backend("POSIX", {{"queue_depth", "5000"}}), ErrorCode::InvalidArgument,
               "5000");
  EXPECT_ERROR(a->create_backend("POSIX", {{"queue_depth", "8x"}}), ErrorCode::InvalidArgument,
               "'8x'");
  EXPECT_ERROR(a->create_backend("POSIX", {{"queue_depth", ""}}), ErrorCode::InvalidArgument,
               "not a number");
  EXPECT_ERROR(a->create_backend("POSIX", {{"bogus", "1"}}), ErrorCode::InvalidArgument, "bogus");
  EXPECT_ERROR(a->create_backend("POSIX", {{"fixed_buffers", "2"}}), ErrorCode::InvalidArgument,
               "POSIX fixed_buffers 2 must be in 0..1");
  ASSERT_TRUE(a->create_backend("POSIX", {{"queue_depth", "2"}}));
  EXPECT_EQ(a->backends(), std::vector<std::string>{"POSIX"});
  // POSIX alone registers DRAM and FILE, not VRAM.
  EXPECT_ERROR(a->register_memory(DescList(MemType::Vram, {{0x1000, 16, 0}})),
               ErrorCode::Unsupported, "VRAM");
}

// Pinned memory of this process, in KiB (VmPin of /proc/self/status), or -1.
long vm_pin_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmPin:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// A registered DRAM region becomes a fixed buffer of the backend's io_uring: the kernel
// pins its pages once (VmPin), not on each request, and I/O through it works; with
// fixed_buffers=0 nothing is pinned. (Registration that the kernel refuses, e.g. over
// RLIMIT_MEMLOCK without CAP_IPC_LOCK, falls back to plain I/O: UringBatch's tests.)
TEST(PosixBackend, RegisteredDramIsPinnedOnceAsAFixedBuffer) {
  TempDir dir;
  constexpr size_t kLen = 8 << 20;
  auto buf = SystemAllocator().allocate(kLen);
  ASSERT_TRUE(buf);
  const int fd = make_file(dir.path() / "f", kLen);
  ASSERT_GE(fd, 0);
  const long before = vm_pin_kib();
  if (before < 0) GTEST_SKIP() << "no VmPin in /proc/self/status";
  for (const char* fixed : {"1", "0"}) {
    AgentConfig none;
    none.backends = {};
    none.add_cuda_if_gpu = false;
    auto a = make_agent("a", none);
    ASSERT_TRUE(a->create_backend("POSIX", {{"fixed_buffers", fixed}}));
    auto mem = a->register_memory(dram(buf->addr(), kLen));
    ASSERT_TRUE(mem) << mem.error().to_string();
    auto f = a->register_memory(file(fd, 0, kLen));
    ASSERT_TRUE(f) << f.error().to_string();
    const long pinned = vm_pin_kib() - before;
    if (std::string(fixed) == "1") {
      EXPECT_GE(pinned, static_cast<long>(kLen >> 10)) << "fixed_buffers=1";
    } else {
      EXPECT_EQ(pinned, 0) << "fixed_buffers=0";
    }
    fill_pattern(buf->data(), kLen, 17);
    ASSERT_TRUE(transfer(*a, Op::Write, dram(buf->addr(), kLen), file(fd, 0, kLen)));
    std::memset(buf->data(), 0, kLen);
    ASSERT_TRUE(
        transfer(*a, Op::Read, dram(buf->addr() + 4096, kLen - 8192), file(fd, 4096, kLen - 8192)));
    EXPECT_EQ(find_pattern_mismatch(static_cast<char*>(buf->data()) + 4096, kLen - 8192, 17, 4096),
              SIZE_MAX);
  }
  ::close(fd);
}

TEST(PosixBackend, FileRegistrationNeedsAnOpenFd) {
  TempDir dir;
  auto a = make_agent("a");
  const int fd = testing::move_fd_high(make_file(dir.path() / "f", 4096));
  ASSERT_GE(fd, 0);
  ::close(fd);  // stays closed: the agent's threads open files too
  EXPECT_ERROR(a->register_memory(file(fd, 0, 4096)), ErrorCode::RegistrationFailed,
               "fd " + std::to_string(fd) + " is not open");
  EXPECT_ERROR(a->register_memory(file(-1, 0, 4096)), ErrorCode::RegistrationFailed,
               "not a file descriptor");
}

// DRAM -> FILE -> DRAM through one agent, with Disk storage registered by the remote layer
// (which unlinks the file), many sizes, unaligned offsets, several descriptors per request.
TEST(PosixBackend, DiskRoundTripThroughTheAgent) {
  TempDir dir;
  auto a = make_agent("a", AgentConfig{.backends = {"POSIX"}});
  const size_t file_size = 16 << 20;
  auto disk = DiskStorage::allocate(file_size, dir.path());
  ASSERT_TRUE(disk) << disk.error().to_string();
  const auto path = disk->path();
  ASSERT_TRUE(register_with_agent(*disk, *a));
  EXPECT_TRUE(disk->unlinked());
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_EQ(registered_agent_name(*disk), "a");
  auto desc = remote_descriptor_of(*disk);
  ASSERT_TRUE(desc);

  auto src = SystemAllocator().allocate(file_size);
  auto dst = SystemAllocator().allocate(file_size);
  ASSERT_TRUE(src && dst);
  ASSERT_TRUE(register_with_agent(*src, *a));
  ASSERT_TRUE(register_with_agent(*dst, *a));
  const int fd = disk->fd();

  const std::vector<uint64_t> sizes = {1, 100, 4096, 4097, 65536, 1 << 20, (2 << 20) + 3};
  const std::vector<uint64_t> skews = {0, 1, 4095};
  uint64_t seed = 1;
  for (uint64_t size : sizes) {
    for (uint64_t skew : skews) {
      const uint64_t foff = (seed * 12289) % (file_size / 2) + skew;
      const uint64_t moff = skew * 3;
      fill_pattern(static_cast<char*>(src->data()) + moff, size, seed);
      std::memset(dst->data(), 0, size + moff);
      ASSERT_TRUE(transfer(*a, Op::Write, dram(src->addr() + moff, size), file(fd, foff, size)))
          << size << " @ " << foff;
      auto st = transfer(*a, Op::Read, dram(dst->addr() + moff + 7, size), file(fd, foff, size));
      ASSERT_TRUE(st) << st.error().to_string();
      EXPECT_EQ(find_pattern_mismatch(static_cast<char*>(dst->data()) + moff + 7, size, seed),
                SIZE_MAX)
          << "size " << size << " file offset " << foff;
      ++seed;
    }
  }

  // Several descriptors in one request, and the FILE side as the local one.
  fill_pattern(src->data(), 3 << 20, 99);
  DescList mem(MemType::Dram), f(MemType::File);
  for (uint64_t i = 0; i < 3; ++i) {
    mem.add(src->addr() + i * (1 << 20), 1 << 20);
    f.add((2 - i) * (1 << 20) + 512, 1 << 20, fd);
  }
  ASSERT_TRUE(transfer(*a, Op::Write, mem, f));
  DescList back(MemType::Dram);
  for (uint64_t i = 0; i < 3; ++i) back.add(dst->addr() + i * (1 << 20), 1 << 20);
  // local FILE, remote DRAM: WRITE pushes the file's bytes into memory.
  ASSERT_TRUE(transfer(*a, Op::Write, f, back));
  EXPECT_EQ(find_pattern_mismatch(dst->data(), 3 << 20, 99), SIZE_MAX);
  // local FILE, remote DRAM: READ pulls memory into the file.
  fill_pattern(src->data(), 4096, 5);
  ASSERT_TRUE(transfer(*a, Op::Read, file(fd, 8192, 4096), dram(src->addr(), 4096)));
  ASSERT_TRUE(transfer(*a, Op::Read, dram(dst->addr(), 4096), file(fd, 8192, 4096)));
  EXPECT_EQ(find_pattern_mismatch(dst->data(), 4096, 5), SIZE_MAX);

  // Bounds: the agent refuses ranges outside the registered file.
  EXPECT_ERROR(
      a->create_request(Op::Read, dram(dst->addr(), 8192), file(fd, file_size - 4096, 8192), "a"),
      ErrorCode::OutOfBounds, "FILE");
  EXPECT_ERROR(a->create_request(Op::Read, dram(dst->addr(), 8), file(fd + 100, 0, 8), "a"),
               ErrorCode::OutOfBounds, "dev " + std::to_string(fd + 100));
  // FILE <-> FILE is nobody's business.
  EXPECT_ERROR(a->create_request(Op::Read, file(fd, 0, 8), file(fd, 4096, 8), "a"),
               ErrorCode::Unsupported, "FILE <-> FILE");

  // The Disk rule: unlinked storage cannot be registered again.
  ASSERT_TRUE(deregister_from_agent(*disk));
  EXPECT_ERROR(register_with_agent(*disk, *a), ErrorCode::InvalidArgument, "already unlinked");
}

// A registered Disk whose fd now names another file (dup2 over it) is neither read nor
// written: the backend checks the file's device and inode at each post, as UCX's file
// server does, whether the request was made before the swap or after it.
TEST(PosixBackend, AnFdReplacedByAnotherFileIsNeitherReadNorWritten) {
  TempDir dir;
  auto a = make_agent("a", AgentConfig{.backends = {"POSIX"}});
  auto disk = DiskStorage::allocate(1 << 20, dir.path());
  ASSERT_TRUE(disk) << disk.error().to_string();
  ASSERT_TRUE(a->register_storage(*disk));
  auto buf = SystemAllocator().allocate(1 << 20);
  ASSERT_TRUE(buf);
  ASSERT_TRUE(a->register_storage(*buf));
  const int fd = disk->fd();
  fill_pattern(buf->data(), 65536, 1);
  ASSERT_TRUE(transfer(*a, Op::Write, dram(buf->addr(), 65536), file(fd, 0, 65536)));
  auto before = a->create_request(Op::Read, dram(buf->addr(), 65536), file(fd, 0, 65536), "a");
  ASSERT_TRUE(before) << before.error().to_string();

  const int other = ::open((dir.path() / "other").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(other, 0);
  std::vector<char> other_bytes(65536);
  fill_pattern(other_bytes.data(), other_bytes.size(), 2);
  ASSERT_EQ(pwrite(other, other_bytes.data(), other_bytes.size(), 0), 65536);
  ASSERT_EQ(dup2(other, fd), fd);
  ::close(other);

  std::memset(buf->data(), 0, 65536);
  const std::string named = "fd " + std::to_string(fd) + " offset 0 len 65536";
  ASSERT_TRUE((*before)->post());
  EXPECT_ERROR((*before)->wait(10s), ErrorCode::Io, named);
  EXPECT_ERROR(transfer(*a, Op::Read, dram(buf->addr(), 65536), file(fd, 0, 65536)), ErrorCode::Io,
               "no longer refers to the registered file");
  const auto* got = static_cast<const char*>(buf->data());
  EXPECT_TRUE(std::all_of(got, got + 65536, [](char c) { return c == 0; }))
      << "the other file was read";
  fill_pattern(buf->data(), 65536, 3);
  EXPECT_ERROR(transfer(*a, Op::Write, dram(buf->addr(), 65536), file(fd, 0, 65536)), ErrorCode::Io,
               named);
  std::vector<char> back(65536);
  ASSERT_EQ(pread(fd, back.data(), back.size(), 0), 65536);
  EXPECT_EQ(find_pattern_mismatch(back.data(), back.size(), 2), SIZE_MAX)
      << "the other file was written";
}

// NotificationsReachTheAgentItself moved to the backend conformance suite
// (tests/conformance: NotificationFollowsTheData/POSIX).

TEST(PosixBackend, ReadPastEndOfFileNamesFileAndOffset) {
  TempDir dir;
  auto a = make_agent("a");
  const auto path = dir.path() / "short";
  const int fd = make_file(path, 8192);
  ASSERT_GE(fd, 0);
  // The region claims more than the file holds: the agent's bounds pass, the read cannot.
  auto reg = a->register_memory(file(fd, 0, 1 << 20));
  ASSERT_TRUE(reg);
  auto buf = SystemAllocator().allocate(1 << 20);
  ASSERT_TRUE(buf && register_with_agent(*buf, *a));
  auto st = transfer(*a, Op::Read, dram(buf->addr(), 16384), file(fd, 4096, 16384));
  EXPECT_ERROR(st, ErrorCode::Io, "read past end of file at offset 8192");
  EXPECT_NE(st.error().message.find(path.string()), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("offset 4096"), std::string::npos);
  EXPECT_NE(st.error().message.find("POSIX"), std::string::npos);
  reg->reset();
  ::close(fd);
}

// A device error (EIO) is a request error that names the file and the offset. The kernel
// gives one for any access through /proc/self/mem to an address nothing is mapped at: below
// mmap_min_addr (64 KiB by default, never less than 4 KiB) nothing ever is.
TEST(PosixBackend, DeviceErrorIsAnIoErrorNamingFileAndOffset) {
  const int fd = ::open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  auto a = make_agent("a", AgentConfig{.backends = {"POSIX"}});
  auto reg = a->register_memory(file(fd, 0, 65536));
  auto buf = SystemAllocator().allocate(65536);
  ASSERT_TRUE(reg && buf && register_with_agent(*buf, *a));
  for (Op op : {Op::Read, Op::Write}) {
    auto st = transfer(*a, op, dram(buf->addr(), 8192), file(fd, 4096, 8192));
    EXPECT_ERROR(st, ErrorCode::Io, "Input/output error");
    EXPECT_NE(st.error().message.find("/mem"), std::string::npos) << st.error().message;
    EXPECT_NE(st.error().message.find("offset 4096"), std::string::npos) << st.error().message;
  }
  // The same fd at a good offset works: there it is our own memory, so a READ copies `buf`.
  fill_pattern(buf->data(), 8192, 5);
  auto good = a->register_memory(file(fd, buf->addr(), 8192));
  auto back = SystemAllocator().allocate(8192);
  ASSERT_TRUE(good && back && register_with_agent(*back, *a));
  ASSERT_TRUE(transfer(*a, Op::Read, dram(back->addr(), 8192), file(fd, buf->addr(), 8192)));
  EXPECT_EQ(find_pattern_mismatch(back->data(), 8192, 5), SIZE_MAX);
  good->reset();
  reg->reset();
  ::close(fd);
}

TEST(PosixBackend, ClosedFdFailsOnlyItsOwnRequest) {
  TempDir dir;
  auto a = make_agent("a", AgentConfig{.backends = {"POSIX"}});
  const int good = make_file(dir.path() / "good", 1 << 20);
  const int bad = testing::move_fd_high(make_file(dir.path() / "bad", 1 << 20));
  ASSERT_GE(good, 0);
  ASSERT_GE(bad, 0);
  auto rg = a->register_memory(file(good, 0, 1 << 20));
  auto rb = a->register_memory(file(bad, 0, 1 << 20));
  ASSERT_TRUE(rg && rb);
  auto buf = SystemAllocator().allocate(1 << 20);
  ASSERT_TRUE(buf && register_with_agent(*buf, *a));
  fill_pattern(buf->data(), 1 << 20, 42);
  ::close(bad);  // registered, then closed behind the agent's back

  // Many requests posted together (the worker batches them): only the bad one fails.
  std::vector<std::unique_ptr<Request>> reqs;
  for (int i = 0; i < 16; ++i) {
    const int fd = i == 7 ? bad : good;
    auto r = a->create_request(Op::Write, dram(buf->addr() + i * 65536, 65536),
                               file(fd, i * 65536, 65536), "a");
    ASSERT_TRUE(r) << r.error().to_string();
    reqs.push_back(std::move(*r));
  }
  for (auto& r : reqs) ASSERT_TRUE(r->post());
  for (int i = 0; i < 16; ++i) {
    auto st = reqs[i]->wait(10s);
    if (i == 7) {
      EXPECT_ERROR(st, ErrorCode::Io, "Bad file descriptor");
      EXPECT_NE(st.error().message.find("offset " + std::to_string(7 * 65536)), std::string::npos);
      EXPECT_EQ(reqs[i]->state(), XferState::Error);
    } else {
      EXPECT_TRUE(st) << i << ": " << st.error().to_string();
    }
  }
  // A failed request can be posted again (and fails again); a done one repeats.
  ASSERT_TRUE(reqs[7]->post());
  EXPECT_ERROR(reqs[7]->wait(10s), ErrorCode::Io, "Bad file descriptor");
  ASSERT_TRUE(reqs[0]->post());
  EXPECT_TRUE(reqs[0]->wait(10s));

  auto back = SystemAllocator().allocate(1 << 20);  // page-aligned: the fd may be O_DIRECT
  ASSERT_TRUE(back);
  ASSERT_EQ(::pread(good, back->data(), 1 << 20, 0), 1 << 20);
  for (int i = 0; i < 16; ++i) {
    if (i == 7) continue;
    EXPECT_EQ(
        find_pattern_mismatch(static_cast<char*>(back->data()) + i * 65536, 65536, 42, i * 65536),
        SIZE_MAX);
  }
  reqs.clear();
  rg->reset();
  rb->reset();
  ::close(good);
}

TEST(PosixBackend, FullFileSystemIsAnIoError) {
  TempDir dir;
  const auto mnt = dir.path() / "mnt";
  std::filesystem::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  }
  {
    auto a = make_agent("a");
    const int fd = make_file(mnt / "f", 1 << 20);  // sparse: larger than the file system
    ASSERT_GE(fd, 0);
    auto reg = a->register_memory(file(fd, 0, 1 << 20));
    auto buf = SystemAllocator().allocate(1 << 20);
    ASSERT_TRUE(reg && buf && register_with_agent(*buf, *a));
    auto st = transfer(*a, Op::Write, dram(buf->addr(), 1 << 20), file(fd, 0, 1 << 20));
    EXPECT_ERROR(st, ErrorCode::Io, "No space left on device");
    EXPECT_NE(st.error().message.find((mnt / "f").string()), std::string::npos);
    reg->reset();
    ::close(fd);
  }
  ::umount2(mnt.c_str(), MNT_DETACH);
}

TEST(PosixBackend, DestroyingARequestInFlightIsSafe) {
  TempDir dir;
  auto a = make_agent("a");
  const int fd = make_file(dir.path() / "f", 8 << 20);
  ASSERT_GE(fd, 0);
  auto reg = a->register_memory(file(fd, 0, 8 << 20));
  auto buf = SystemAllocator().allocate(8 << 20);
  ASSERT_TRUE(reg && buf && register_with_agent(*buf, *a));
  for (int i = 0; i < 20; ++i) {
    auto r = a->create_request(Op::Write, dram(buf->addr(), 8 << 20), file(fd, 0, 8 << 20), "a");
    ASSERT_TRUE(r);
    ASSERT_TRUE((*r)->post());
  }  // each destroyed while queued or running
  reg->reset();
  ::close(fd);
}

// POSIX moves only its own agent's files; a peer's files are served by the peer's UCX
// backend (tests/integration/remote_file_test covers that path between processes).
TEST(PosixBackend, PeersFilesGoThroughTheirOwnersUcx) {
  TempDir dir;
  auto a = make_agent("a");
  auto b = make_agent("b");
  const int fd = make_file(dir.path() / "f", 4096);
  ASSERT_GE(fd, 0);
  auto reg = a->register_memory(file(fd, 0, 4096));
  ASSERT_TRUE(reg);
  auto md = a->local_metadata();
  ASSERT_TRUE(md);
  auto peer = b->load_remote_metadata(*md);  // a's POSIX regions load without complaint
  ASSERT_TRUE(peer) << peer.error().to_string();
  auto buf = SystemAllocator().allocate(4096);
  ASSERT_TRUE(buf && register_with_agent(*buf, *b));
  std::memset(buf->data(), 0x5a, 4096);
  auto req = b->create_request(Op::Read, dram(buf->addr(), 4096), file(fd, 0, 4096), "a");
  ASSERT_TRUE(req) << req.error().to_string();
  ASSERT_TRUE((*req)->post());
  ASSERT_TRUE((*req)->wait(10s)) << (*req)->error().to_string();
  EXPECT_EQ(std::string(static_cast<const char*>(buf->data()), 4096), std::string(4096, '\0'));
  // Notifications to a peer skip POSIX (own agent only) and go over UCX.
  ASSERT_TRUE(b->gen_notif("a", "hi"));
  std::vector<Notification> got;
  for (int i = 0; i < 5000 && got.empty(); ++i) {
    got = a->get_notifs();
    if (got.empty()) std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (Notification{"b", "hi"}));
  reg->reset();
  ::close(fd);
}

}  // namespace
}  // namespace kvbm::xfer
