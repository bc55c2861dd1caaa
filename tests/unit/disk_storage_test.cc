#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

namespace fs = std::filesystem;

TEST(DiskStorage, CreatesSizedUniqueFileAndRemovesIt) {
  testing::TempDir dir;
  DiskAllocator alloc(dir.path());
  fs::path p1, p2;
  {
    auto a = alloc.allocate(1 << 20);
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    auto b = alloc.allocate(4096);
    ASSERT_TRUE(b.ok());
    p1 = a->path();
    p2 = b->path();
    EXPECT_NE(p1, p2);
    EXPECT_EQ(p1.parent_path(), dir.path());
    EXPECT_TRUE(fs::exists(p1));
    EXPECT_EQ(fs::file_size(p1), 1u << 20);
    EXPECT_EQ(a->type(), StorageType::disk(a->fd()));
    EXPECT_EQ(a->addr(), 0u);
    EXPECT_EQ(a->data(), nullptr);
    EXPECT_FALSE(a->unlinked());
    struct stat st {};
    ASSERT_EQ(fstat(a->fd(), &st), 0);
    EXPECT_GE(static_cast<size_t>(st.st_blocks) * 512, 1u << 20) << "space not reserved";
    int flags = fcntl(a->fd(), F_GETFL);
    EXPECT_EQ((flags & O_DIRECT) != 0, a->direct_io());
  }
  EXPECT_FALSE(fs::exists(p1));
  EXPECT_FALSE(fs::exists(p2));
}

TEST(DiskStorage, ReadWriteThroughFd) {
  testing::TempDir dir;
  auto d = DiskStorage::allocate(8192, dir.path());
  ASSERT_TRUE(d.ok());
  // O_DIRECT needs aligned buffers: use page-aligned system storage.
  auto buf = SystemStorage::allocate(8192);
  ASSERT_TRUE(buf.ok());
  testing::fill_pattern(buf->data(), 8192, 3);
  ASSERT_EQ(pwrite(d->fd(), buf->data(), 8192, 0), 8192);
  std::memset(buf->data(), 0, 8192);
  ASSERT_EQ(pread(d->fd(), buf->data(), 8192, 0), 8192);
  EXPECT_EQ(testing::find_pattern_mismatch(buf->data(), 8192, 3), SIZE_MAX);
}

TEST(DiskStorage, UnlinkKeepsDataThroughFd) {
  testing::TempDir dir;
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok());
  auto buf = SystemStorage::allocate(4096);
  testing::fill_pattern(buf->data(), 4096, 11);
  ASSERT_EQ(pwrite(d->fd(), buf->data(), 4096, 0), 4096);
  fs::path p = d->path();
  ASSERT_TRUE(d->unlink().ok());
  EXPECT_TRUE(d->unlinked());
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(d->unlink().ok()) << "unlink is idempotent";
  std::memset(buf->data(), 0, 4096);
  ASSERT_EQ(pread(d->fd(), buf->data(), 4096, 0), 4096);
  EXPECT_EQ(testing::find_pattern_mismatch(buf->data(), 4096, 11), SIZE_MAX);
}

TEST(DiskStorage, UnlinkFailureIsAnIoError) {
  testing::TempDir dir;
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(fs::remove(d->path()));  // someone else removed it
  EXPECT_ERROR(d->unlink(), ErrorCode::Io, d->path().string());
  EXPECT_FALSE(d->unlinked());
}

TEST(DiskStorage, DefaultDirectoryIsTemp) {
  auto d = DiskAllocator().allocate(4096);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->path().parent_path(), fs::temp_directory_path());
}

TEST(DiskStorage, ZeroSizeIsInvalid) {
  testing::TempDir dir;
  EXPECT_ERROR(DiskStorage::allocate(0, dir.path()), ErrorCode::InvalidArgument, "size");
}

TEST(DiskStorage, MissingDirectory) {
  EXPECT_ERROR(DiskStorage::allocate(4096, "/nonexistent/kvbm"), ErrorCode::Io,
               "/nonexistent/kvbm");
}

TEST(DiskStorage, PathThatIsAFile) {
  testing::TempDir dir;
  fs::path f = dir.path() / "plain";
  { std::ofstream(f) << "x"; }
  EXPECT_ERROR(DiskStorage::allocate(4096, f), ErrorCode::Io, "not a directory");
}

TEST(DiskStorage, UnwritableDirectory) {
  // Root ignores permission bits, so use a directory no one can create files in.
  fs::path ro = geteuid() == 0 ? fs::path("/proc") : fs::path();
  testing::TempDir dir;
  if (ro.empty()) {
    ro = dir.path() / "ro";
    fs::create_directory(ro);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  }
  EXPECT_ERROR(DiskStorage::allocate(4096, ro), ErrorCode::Io, ro.string());
}

TEST(DiskStorage, SpaceThatCannotBeReserved) {
  testing::TempDir dir;
  const size_t huge = size_t{1} << 62;  // far past any file system here
  auto d = DiskStorage::allocate(huge, dir.path());
  EXPECT_ERROR(d, ErrorCode::AllocationFailed, std::to_string(huge));
  // The half-made file was removed.
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(DiskStorage, FileSizeLimitIsAnAllocationError) {
  testing::TempDir dir;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim {
      1 << 20, 1 << 20
    };
    setrlimit(RLIMIT_FSIZE, &lim);
    auto d = DiskStorage::allocate(8 << 20, dir.path());
    bool right = !d.ok() && d.code() == ErrorCode::AllocationFailed &&
                 d.error().message.find("8388608") != std::string::npos;
    _exit(right && fs::is_empty(dir.path()) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(DiskStorage, MoveTransfersOwnership) {
  testing::TempDir dir;
  auto d = DiskStorage::allocate(4096, dir.path());
  ASSERT_TRUE(d.ok());
  fs::path p = d->path();
  {
    DiskStorage moved = std::move(*d);
    EXPECT_EQ(moved.path(), p);
    EXPECT_TRUE(fs::exists(p));
  }
  EXPECT_FALSE(fs::exists(p));
}

}  // namespace
}  // namespace kvbm
