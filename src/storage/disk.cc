#include "kvbm/storage/disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kvbm/log.h"

namespace kvbm {
namespace {

// Creates "<dir>/kvbm-XXXXXX" exclusively; returns the fd or -errno.
int make_unique_file(const std::filesystem::path& dir, int flags, std::string& path_out) {
  std::string tmpl = (dir / "kvbm-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = mkostemp(buf.data(), flags | O_CLOEXEC);
  if (fd < 0) return -errno;
  path_out.assign(buf.data());
  return fd;
}

}  // namespace

Result<DiskStorage> DiskStorage::allocate(size_t size, const std::filesystem::path& dir_in) {
  if (size == 0) return err(ErrorCode::InvalidArgument, "disk storage size must be > 0");
  std::error_code ec;
  const std::filesystem::path dir =
      dir_in.empty() ? std::filesystem::temp_directory_path(ec) : dir_in;
  if (ec) return err(ErrorCode::Io, "no temp directory: ", ec.message());

  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return err(ErrorCode::Io, "disk storage directory '", dir.string(),
               "': ", std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return err(ErrorCode::Io, "disk storage directory '", dir.string(), "' is not a directory");
  }

  std::string path;
  bool direct = true;
  int fd = make_unique_file(dir, O_DIRECT, path);
  if (fd == -EINVAL) {  // the file system refuses O_DIRECT (tmpfs, some overlays)
    direct = false;
    fd = make_unique_file(dir, 0, path);
  }
  if (fd < 0) {
    return err(ErrorCode::Io, "cannot create a file in '", dir.string(), "': ", std::strerror(-fd));
  }
  if (!direct) {
    static std::once_flag once;
    std::call_once(once, [&] {
      log(LogLevel::Info,
          "'" + dir.string() + "' does not support O_DIRECT; disk storage uses buffered I/O");
    });
  }

  if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0) {
    int e = errno;
    bool reserved = false;
    if (e == EOPNOTSUPP && ::ftruncate(fd, static_cast<off_t>(size)) == 0) reserved = true;
    if (!reserved) {
      ::close(fd);
      ::unlink(path.c_str());
      return err(ErrorCode::AllocationFailed, "cannot reserve ", size, " bytes for '", path,
                 "': ", std::strerror(e));
    }
  }
  return DiskStorage(fd, size, std::filesystem::path(path), direct);
}

Status DiskStorage::unlink() {
  if (unlinked_) return {};
  if (::unlink(path_.c_str()) != 0) {
    return err(ErrorCode::Io, "unlink '", path_.string(), "': ", std::strerror(errno));
  }
  unlinked_ = true;
  return {};
}

DiskStorage::DiskStorage(DiskStorage&& other) noexcept
    : RegisterableStorage(std::move(other)),
      fd_(std::exchange(other.fd_, -1)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)),
      direct_io_(other.direct_io_),
      unlinked_(std::exchange(other.unlinked_, true)) {}

DiskStorage& DiskStorage::operator=(DiskStorage&& other) noexcept {
  if (this != &other) {
    reset();
    RegisterableStorage::operator=(std::move(other));
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
    direct_io_ = other.direct_io_;
    unlinked_ = std::exchange(other.unlinked_, true);
  }
  return *this;
}

DiskStorage::~DiskStorage() {
  reset();
}

void DiskStorage::reset() noexcept {
  release_registrations();
  if (fd_ >= 0) {
    if (!unlinked_ && ::unlink(path_.c_str()) != 0) {
      log(LogLevel::Error, "unlink '" + path_.string() + "': " + std::strerror(errno));
    }
    ::close(fd_);
  }
  fd_ = -1;
  size_ = 0;
  unlinked_ = true;
}

}  // namespace kvbm
