// SystemStorage: page-aligned host memory from anonymous mmap (so always zero-filled
// when it arrives). SystemAllocator makes them.
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
  SystemStorage(void* ptr, size_t size) : ptr_(ptr), size_(size) {}
  void reset() noexcept;

  void* ptr_ = nullptr;
  size_t size_ = 0;
};

class SystemAllocator {
 public:
  Result<SystemStorage> allocate(size_t size) const { return SystemStorage::allocate(size); }
};

}  // namespace kvbm
