// DiskStorage: a file of a fixed size, created with a unique name in a directory
// (default: the system temp dir), its space reserved with fallocate, and opened with
// O_DIRECT where the file system allows it (otherwise buffered, and direct_io() says so).
//
// The file is removed when the storage is destroyed, or earlier by unlink(): the bytes
// stay reachable through fd() until destruction. Addresses of a Disk storage are file
// offsets (addr() is 0) and its StorageType id is the fd.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <filesystem>
#include <string>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"

namespace kvbm {

/// A file of `size` bytes (addresses are file offsets); closed, and removed unless
/// unlinked already, on destruction.
class KVBM_API DiskStorage final : public RegisterableStorage {
 public:
  /// InvalidArgument for size 0; Io (naming the directory) when it is missing or not
  /// writable; AllocationFailed (naming size and file) when the space cannot be reserved.
  static Result<DiskStorage> allocate(size_t size, const std::filesystem::path& dir = {});

  /// Moves the storage; `other` is left empty (size 0).
  DiskStorage(DiskStorage&& other) noexcept;
  /// Frees this storage's memory, then takes `other`'s; `other` is left empty.
  DiskStorage& operator=(DiskStorage&& other) noexcept;
  ~DiskStorage() override;

  StorageType type() const override { return StorageType::disk(fd_); }
  uint64_t addr() const override { return 0; }
  size_t size() const override { return size_; }

  /// The open file's descriptor, owned by the storage.
  int fd() const { return fd_; }
  /// Where the file was made (its name is gone once unlinked()).
  const std::filesystem::path& path() const { return path_; }
  /// True when the file was opened with O_DIRECT.
  bool direct_io() const { return direct_io_; }

  /// Removes the file's name now; the fd keeps the data. Io if unlink(2) fails.
  Status unlink();
  /// Whether unlink() removed the name.
  bool unlinked() const { return unlinked_; }

 private:
  DiskStorage(int fd, size_t size, std::filesystem::path path, bool direct)
      : fd_(fd), size_(size), path_(std::move(path)), direct_io_(direct) {}
  void reset() noexcept;

  int fd_ = -1;
  size_t size_ = 0;
  std::filesystem::path path_;
  bool direct_io_ = false;
  bool unlinked_ = false;
};

/// Makes DiskStorage files in one directory (for Layout::allocate).
class KVBM_API DiskAllocator {
 public:
  /// Files go in `dir` (empty: the temp directory).
  explicit DiskAllocator(std::filesystem::path dir = {}) : dir_(std::move(dir)) {}
  /// DiskStorage::allocate(size, dir()).
  Result<DiskStorage> allocate(size_t size) const { return DiskStorage::allocate(size, dir_); }
  /// The directory.
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace kvbm
