// SystemStorage: page-aligned, zero-filled host memory. SystemAllocator makes them.
//
// Two kinds. Private (the default): anonymous memory, the fastest for this process's own
// copies (the kernel backs it with huge pages where it can). Shareable: a shared mapping
// of an anonymous memory file (memfd), which an agent's peer on the same host maps to
// copy with plain loads and stores, 2-3x faster than the system calls it needs
// otherwise (see the UCX backend's same-host path). Shared memory often gets no huge
// pages (the kernel's shmem_enabled), so bulk copies within this process can be slower
// (a slower memcpy); and a child made by fork() shares the
// pages with its parent instead of getting a copy. Where memfd is unavailable,
// Shareable falls back to Private.
#pragma once

#include "kvbm/export.h"

#include <cstddef>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"

namespace kvbm {

enum class SystemMemory { Private, Shareable };

/// Page-aligned host memory (an anonymous mapping, or a memfd's when Shareable); unmapped
/// on destruction.
class KVBM_API SystemStorage final : public RegisterableStorage {
 public:
  /// InvalidArgument for size 0; AllocationFailed (naming the size) when the kernel
  /// refuses the mapping or the size exceeds the machine's memory.
  static Result<SystemStorage> allocate(size_t size, SystemMemory kind = SystemMemory::Private);

  /// Moves the storage; `other` is left empty (size 0).
  SystemStorage(SystemStorage&& other) noexcept;
  /// Frees this storage's memory, then takes `other`'s; `other` is left empty.
  SystemStorage& operator=(SystemStorage&& other) noexcept;
  ~SystemStorage() override;

  StorageType type() const override { return StorageType::system(); }
  uint64_t addr() const override { return reinterpret_cast<uint64_t>(ptr_); }
  size_t size() const override { return size_; }
  void* data() override { return ptr_; }
  const void* data() const override { return ptr_; }
  /// Whether a same-host peer can map this memory (a Shareable allocation that got its memfd).
  bool shareable() const { return fd_ >= 0; }

 private:
  SystemStorage(void* ptr, size_t size, int fd) : ptr_(ptr), size_(size), fd_(fd) {}
  void reset() noexcept;

  void* ptr_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;  ///< the memfd, or -1 for private anonymous memory
};

/// Makes SystemStorage of one kind (for Layout::allocate).
class KVBM_API SystemAllocator {
 public:
  /// An allocator of `kind` memory.
  explicit SystemAllocator(SystemMemory kind = SystemMemory::Private) : kind_(kind) {}
  /// SystemStorage::allocate(size, kind).
  Result<SystemStorage> allocate(size_t size) const { return SystemStorage::allocate(size, kind_); }

 private:
  SystemMemory kind_;
};

}  // namespace kvbm
