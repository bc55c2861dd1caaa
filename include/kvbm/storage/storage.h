// Storage: a region of bytes in one tier. The base of every storage kind.
//
// Ownership: a concrete storage owns its memory or file and frees it in its destructor;
// storages are move-only. Thread safety: const calls may be made from many threads at
// once; registration and other mutation need external synchronization.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <cstdint>

#include "kvbm/storage/storage_type.h"

namespace kvbm {

/// A region of bytes in one tier: the base of every storage kind.
class KVBM_API Storage {
 public:
  virtual ~Storage() = default;

  /// The tier (and device ordinal or file descriptor) this storage is in.
  virtual StorageType type() const = 0;
  /// Base address: a host or device virtual address for memory tiers, 0 (the file offset
  /// of the first byte) for Disk, the peer's address for Remote.
  virtual uint64_t addr() const = 0;
  /// The size in bytes.
  virtual size_t size() const = 0;

  /// The bytes, when they live in this process's address space (host memory, or device
  /// memory as a device pointer); nullptr for Disk, Remote and Null.
  virtual void* data() { return nullptr; }
  /// As data(), read-only.
  virtual const void* data() const { return nullptr; }

 protected:
  Storage() = default;
  /// Storages are move-only.
  Storage(Storage&&) noexcept = default;
  /// Storages are move-only.
  Storage& operator=(Storage&&) noexcept = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

}  // namespace kvbm
