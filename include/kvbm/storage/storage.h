// Storage: a region of bytes in one tier. The base of every storage kind.
//
// Ownership: a concrete storage owns its memory or file and frees it in its destructor;
// storages are move-only. Thread safety: const calls may be made from many threads at
// once; registration and other mutation need external synchronization.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvbm/storage/storage_type.h"

namespace kvbm {

class Storage {
 public:
  virtual ~Storage() = default;

  virtual StorageType type() const = 0;
  // Base address: a host or device virtual address for memory tiers, 0 (the file offset
  // of the first byte) for Disk, the peer's address for Remote.
  virtual uint64_t addr() const = 0;
  virtual size_t size() const = 0;

  // The bytes, when they live in this process's address space (host memory, or device
  // memory as a device pointer); nullptr for Disk, Remote and Null.
  virtual void* data() { return nullptr; }
  virtual const void* data() const { return nullptr; }

 protected:
  Storage() = default;
  Storage(Storage&&) noexcept = default;
  Storage& operator=(Storage&&) noexcept = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

}  // namespace kvbm
