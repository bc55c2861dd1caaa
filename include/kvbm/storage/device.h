// DeviceStorage: cudaMalloc'd memory on one GPU, which it remembers by ordinal (the
// device id that descriptors of GPU memory carry). Freed with that device current.
// DeviceUnavailable without a GPU or CUDA build; InvalidArgument for an ordinal that
// does not exist.
#pragma once

#include <cstddef>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"

namespace kvbm {

class DeviceStorage final : public RegisterableStorage {
 public:
  static Result<DeviceStorage> allocate(size_t size, int ordinal = 0);

  DeviceStorage(DeviceStorage&& other) noexcept;
  DeviceStorage& operator=(DeviceStorage&& other) noexcept;
  ~DeviceStorage() override;

  StorageType type() const override { return StorageType::device(ordinal_); }
  uint64_t addr() const override { return reinterpret_cast<uint64_t>(ptr_); }
  size_t size() const override { return size_; }
  // A device pointer: dereference it only in device code or through CUDA copies.
  void* data() override { return ptr_; }
  const void* data() const override { return ptr_; }
  int ordinal() const { return ordinal_; }

 private:
  DeviceStorage(void* ptr, size_t size, int ordinal) : ptr_(ptr), size_(size), ordinal_(ordinal) {}
  void reset() noexcept;

  void* ptr_ = nullptr;
  size_t size_ = 0;
  int ordinal_ = 0;
};

class DeviceAllocator {
 public:
  explicit DeviceAllocator(int ordinal = 0) : ordinal_(ordinal) {}
  Result<DeviceStorage> allocate(size_t size) const {
    return DeviceStorage::allocate(size, ordinal_);
  }
  int ordinal() const { return ordinal_; }

 private:
  int ordinal_;
};

}  // namespace kvbm
