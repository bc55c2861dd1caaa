#include "kvbm/storage/system.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace kvbm {

Result<SystemStorage> SystemStorage::allocate(size_t size) {
  if (size == 0) return err(ErrorCode::InvalidArgument, "system storage size must be > 0");
  // Anonymous mmap: page-aligned, zero-filled, and a refusal is an errno, not an abort.
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return err(ErrorCode::AllocationFailed, "system storage of ", size,
               " bytes: mmap failed: ", std::strerror(errno));
  }
  return SystemStorage(p, size);
}

SystemStorage::SystemStorage(SystemStorage&& other) noexcept
    : RegisterableStorage(std::move(other)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SystemStorage& SystemStorage::operator=(SystemStorage&& other) noexcept {
  if (this != &other) {
    reset();
    RegisterableStorage::operator=(std::move(other));
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SystemStorage::~SystemStorage() {
  reset();
}

void SystemStorage::reset() noexcept {
  release_registrations();
  if (ptr_ != nullptr) munmap(ptr_, size_);
  ptr_ = nullptr;
  size_ = 0;
}

}  // namespace kvbm
