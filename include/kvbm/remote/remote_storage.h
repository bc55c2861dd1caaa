// RemoteStorage: a description of memory registered with an agent, possibly another
// process's. It owns no memory, it is cheap to copy, and it can
// be sent to another node: address (a file offset for files), size, memory type, and
// device id (0 for host memory, the CUDA ordinal for GPU memory, the fd for files).
// Thread safety: a plain value.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <cstdint>

#include "kvbm/result.h"
#include "kvbm/storage/storage.h"
#include "kvbm/xfer/types.h"

namespace kvbm {

/// The description of memory or a file region that an agent registered: where it is
/// and which memory type, no bytes. A copyable value.
class KVBM_API RemoteStorage final : public Storage {
 public:
  /// `size` bytes at `addr` of memory type `mem_type` on device `device_id`.
  RemoteStorage(uint64_t addr, size_t size, xfer::MemType mem_type, uint64_t device_id)
      : addr_(addr), size_(size), mem_type_(mem_type), device_id_(device_id) {}
  /// Copies the description.
  RemoteStorage(const RemoteStorage& other)
      : Storage(),
        addr_(other.addr_),
        size_(other.size_),
        mem_type_(other.mem_type_),
        device_id_(other.device_id_) {}
  /// Copies the description.
  RemoteStorage& operator=(const RemoteStorage& other) {
    addr_ = other.addr_;
    size_ = other.size_;
    mem_type_ = other.mem_type_;
    device_id_ = other.device_id_;
    return *this;
  }

  /// The descriptor of `size` bytes at `offset` inside a local storage (a sub-region).
  /// OutOfBounds, naming offset, size and total, when the range does not fit (overflow
  /// safe); InvalidArgument for storages with no memory (Null). For a RemoteStorage
  /// this is slice().
  static Result<RemoteStorage> from_storage_with_offset(const Storage& storage, size_t offset,
                                                        size_t size);
  /// The same rule on a RemoteStorage: a sub-region of a description.
  Result<RemoteStorage> slice(size_t offset, size_t size) const;

  StorageType type() const override { return StorageType::remote(); }
  uint64_t addr() const override { return addr_; }
  size_t size() const override { return size_; }
  /// The agent's memory type (DRAM, VRAM, FILE).
  xfer::MemType mem_type() const { return mem_type_; }
  /// The GPU ordinal for VRAM, the file's id for FILE, else 0.
  uint64_t device_id() const { return device_id_; }

  /// As the transfer agent takes it.
  xfer::DescList to_desc_list() const {
    return {mem_type_, {xfer::Desc{addr_, size_, device_id_}}};
  }

  /// Same range, memory type and device.
  bool operator==(const RemoteStorage& o) const {
    return addr_ == o.addr_ && size_ == o.size_ && mem_type_ == o.mem_type_ &&
           device_id_ == o.device_id_;
  }

 private:
  uint64_t addr_;
  size_t size_;
  xfer::MemType mem_type_;
  uint64_t device_id_;
};

}  // namespace kvbm
