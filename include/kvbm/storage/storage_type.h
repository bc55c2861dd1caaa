// StorageType: which tier a storage lives in, plus the tier's identifier
// (the CUDA device ordinal for Device, the file descriptor for Disk, 0 otherwise).
#pragma once

#include "kvbm/export.h"

#include <cstdint>
#include <string>

namespace kvbm {

enum class StorageKind : uint8_t { System, Pinned, Device, Disk, Remote, Null };

/// A storage's tier and, within it, which device or file.
struct KVBM_API StorageType {
  StorageKind kind = StorageKind::Null;  ///< The tier.
  uint64_t id = 0;  ///< Device: the CUDA ordinal; Disk: the file descriptor; else 0.

  ///@{
  /// The StorageType of each kind (Device: its ordinal; Disk: its file descriptor).
  static constexpr StorageType system() { return {StorageKind::System, 0}; }
  static constexpr StorageType pinned() { return {StorageKind::Pinned, 0}; }
  static constexpr StorageType device(int ordinal) {
    return {StorageKind::Device, static_cast<uint64_t>(ordinal)};
  }
  static constexpr StorageType disk(int fd) {
    return {StorageKind::Disk, static_cast<uint64_t>(fd)};
  }
  static constexpr StorageType remote() { return {StorageKind::Remote, 0}; }
  static constexpr StorageType null() { return {StorageKind::Null, 0}; }
  ///@}

  /// Same kind and id.
  bool operator==(const StorageType&) const = default;

  /// "System", "Device(0)", "Disk(fd 7)"
  std::string to_string() const;
};

KVBM_API const char* to_string(StorageKind kind);

}  // namespace kvbm
