#include "kvbm/storage/system.h"

#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "storage/shared_memory.h"

namespace kvbm {

Result<SystemStorage> SystemStorage::allocate(size_t size, SystemMemory kind) {
  if (size == 0) return err(ErrorCode::InvalidArgument, "system storage size must be > 0");
  // A shared file mapping is not refused up front the way an overcommitted private one
  // is: ask for no more than the machine has, so a huge size is an error, not a
  // process killed later.
  struct sysinfo si {};
  if (::sysinfo(&si) == 0 && size / si.mem_unit > uint64_t{si.totalram} + uint64_t{si.totalswap}) {
    return err(ErrorCode::AllocationFailed, "system storage of ", size, " bytes exceeds the ",
               (uint64_t{si.totalram} + si.totalswap) * si.mem_unit,
               " bytes of memory and swap of this machine");
  }
  int fd = kind == SystemMemory::Shareable ? ::memfd_create("kvbm-system", MFD_CLOEXEC) : -1;
  if (fd >= 0 && ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    const int e = errno;
    ::close(fd);
    return err(ErrorCode::AllocationFailed, "system storage of ", size,
               " bytes: ftruncate of its memfd failed: ", std::strerror(e));
  }
  // mmap: page-aligned, zero-filled, and a refusal is an errno, not an abort.
  void* p = fd >= 0
                ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                : mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    if (fd >= 0) ::close(fd);
    return err(ErrorCode::AllocationFailed, "system storage of ", size,
               " bytes: mmap failed: ", std::strerror(e));
  }
  // Large buffers are copied in bulk: huge pages, where the kernel allows them, spare
  // the TLB. Only advice: refusal changes nothing.
  if (size >= (size_t{2} << 20)) (void)::madvise(p, size, MADV_HUGEPAGE);
  if (fd >= 0) detail::add_shared_memory(p, size, fd);
  return SystemStorage(p, size, fd);
}

SystemStorage::SystemStorage(SystemStorage&& other) noexcept
    : RegisterableStorage(std::move(other)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)) {}

SystemStorage& SystemStorage::operator=(SystemStorage&& other) noexcept {
  if (this != &other) {
    reset();
    RegisterableStorage::operator=(std::move(other));
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

SystemStorage::~SystemStorage() {
  reset();
}

void SystemStorage::reset() noexcept {
  release_registrations();
  if (fd_ >= 0) detail::remove_shared_memory(ptr_);
  if (ptr_ != nullptr) munmap(ptr_, size_);
  if (fd_ >= 0) ::close(fd_);
  ptr_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

}  // namespace kvbm
