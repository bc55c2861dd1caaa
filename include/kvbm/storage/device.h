// DeviceStorage: cudaMalloc'd memory on one GPU, which it remembers by ordinal (the
// device id that descriptors of GPU memory carry). Freed with that device current.
// DeviceUnavailable without a GPU or CUDA build; InvalidArgument for an ordinal that
// does not exist.
#pragma once

#include "kvbm/export.h"

#include <cstddef>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"

namespace kvbm {

/// GPU memory (cudaMalloc) on one device; freed on destruction.
class KVBM_API DeviceStorage final : public RegisterableStorage {
 public:
  /// `size` bytes on GPU `ordinal`. DeviceUnavailable without CUDA or that GPU;
  /// AllocationFailed when CUDA cannot allocate; InvalidArgument for size 0.
  static Result<DeviceStorage> allocate(size_t size, int ordinal = 0);

  /// Moves the storage; `other` is left empty (size 0).
  DeviceStorage(DeviceStorage&& other) noexcept;
  /// Frees this storage's memory, then takes `other`'s; `other` is left empty.
  DeviceStorage& operator=(DeviceStorage&& other) noexcept;
  ~DeviceStorage() override;

  StorageType type() const override { return StorageType::device(ordinal_); }
  uint64_t addr() const override { return reinterpret_cast<uint64_t>(ptr_); }
  size_t size() const override { return size_; }
  /// A device pointer: dereference it only in device code or through CUDA copies.
  void* data() override { return ptr_; }
  const void* data() const override { return ptr_; }
  /// The CUDA device ordinal.
  int ordinal() const { return ordinal_; }

 private:
  DeviceStorage(void* ptr, size_t size, int ordinal) : ptr_(ptr), size_(size), ordinal_(ordinal) {}
  void reset() noexcept;

  void* ptr_ = nullptr;
  size_t size_ = 0;
  int ordinal_ = 0;
};

/// Makes DeviceStorage on one GPU (for Layout::allocate).
class KVBM_API DeviceAllocator {
 public:
  /// An allocator for GPU `ordinal`.
  explicit DeviceAllocator(int ordinal = 0) : ordinal_(ordinal) {}
  /// DeviceStorage::allocate(size, ordinal()).
  Result<DeviceStorage> allocate(size_t size) const {
    return DeviceStorage::allocate(size, ordinal_);
  }
  /// The CUDA device ordinal.
  int ordinal() const { return ordinal_; }

 private:
  int ordinal_;
};

}  // namespace kvbm
