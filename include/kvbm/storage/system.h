// SystemStorage: page-aligned, zero-filled host memory. It is a shared mapping of an
// anonymous memory file (memfd), so that an agent's peer on the same host can map the
// same pages and copy with plain loads and stores; where memfd is unavailable, private
// anonymous memory. Being a shared mapping, a child made by fork() shares the pages
// with its parent instead of getting a copy. SystemAllocator makes them.
#pragma once

#include <cstddef>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"

namespace kvbm {

class SystemStorage final : public RegisterableStorage {
 public:
  // InvalidArgument for size 0; AllocationFailed (naming the size) when the kernel
  // refuses the mapping.
  static Result<SystemStorage> allocate(size_t size);

  SystemStorage(SystemStorage&& other) noexcept;
  SystemStorage& operator=(SystemStorage&& other) noexcept;
  ~SystemStorage() override;

  StorageType type() const override { return StorageType::system(); }
  uint64_t addr() const override { return reinterpret_cast<uint64_t>(ptr_); }
  size_t size() const override { return size_; }
  void* data() override { return ptr_; }
  const void* data() const override { return ptr_; }

 private:
  SystemStorage(void* ptr, size_t size, int fd) : ptr_(ptr), size_(size), fd_(fd) {}
  void reset() noexcept;

  void* ptr_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;  // the memfd, or -1 for private anonymous memory
};

class SystemAllocator {
 public:
  Result<SystemStorage> allocate(size_t size) const { return SystemStorage::allocate(size); }
};

}  // namespace kvbm
