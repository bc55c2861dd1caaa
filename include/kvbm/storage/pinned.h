// PinnedStorage: page-locked host memory that the GPU can reach directly.
//
// Two ways in: PinnedAllocator::allocate (cudaHostAlloc, portable and mapped, so that a
// kernel can read it through its device pointer) and pin() of existing host memory
// (cudaHostRegister). DeviceUnavailable when there is no GPU, no driver, or kvbm was
// built without CUDA.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <optional>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"
#include "kvbm/storage/system.h"

namespace kvbm {

/// Page-locked host memory that GPUs reach directly (cudaHostAlloc, or memory pinned
/// with cudaHostRegister).
class KVBM_API PinnedStorage final : public RegisterableStorage {
 public:
  /// `size` bytes of cudaHostAlloc memory. DeviceUnavailable without CUDA or a GPU;
  /// AllocationFailed when CUDA cannot allocate; InvalidArgument for size 0.
  static Result<PinnedStorage> allocate(size_t size);
  /// Pins memory this storage then owns; it is unpinned, then freed, on destruction.
  static Result<PinnedStorage> pin(SystemStorage memory);
  /// Pins memory the caller owns and keeps alive for the storage's lifetime; it is
  /// unpinned (not freed) on destruction.
  static Result<PinnedStorage> pin(void* ptr, size_t size);

  /// Moves the storage; `other` is left empty (size 0).
  PinnedStorage(PinnedStorage&& other) noexcept;
  /// Frees this storage's memory, then takes `other`'s; `other` is left empty.
  PinnedStorage& operator=(PinnedStorage&& other) noexcept;
  ~PinnedStorage() override;

  StorageType type() const override { return StorageType::pinned(); }
  uint64_t addr() const override { return reinterpret_cast<uint64_t>(ptr_); }
  size_t size() const override { return size_; }
  void* data() override { return ptr_; }
  const void* data() const override { return ptr_; }
  /// The address a kernel uses for these bytes (equal to data() with unified addressing).
  void* device_pointer() const { return device_ptr_; }

 private:
  enum class Origin { HostAlloc, Registered };
  PinnedStorage(void* ptr, size_t size, Origin origin, std::optional<SystemStorage> owned);
  void reset() noexcept;

  void* ptr_ = nullptr;
  void* device_ptr_ = nullptr;
  size_t size_ = 0;
  Origin origin_ = Origin::HostAlloc;
  std::optional<SystemStorage> owned_;  ///< set when pin() took ownership
};

/// Makes PinnedStorage (for Layout::allocate).
class KVBM_API PinnedAllocator {
 public:
  /// PinnedStorage::allocate(size).
  Result<PinnedStorage> allocate(size_t size) const { return PinnedStorage::allocate(size); }
};

}  // namespace kvbm
