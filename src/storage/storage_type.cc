#include "kvbm/storage/storage_type.h"

namespace kvbm {

const char* to_string(StorageKind kind) {
  switch (kind) {
    case StorageKind::System:
      return "System";
    case StorageKind::Pinned:
      return "Pinned";
    case StorageKind::Device:
      return "Device";
    case StorageKind::Disk:
      return "Disk";
    case StorageKind::Remote:
      return "Remote";
    case StorageKind::Null:
      return "Null";
  }
  return "Unknown";
}

std::string StorageType::to_string() const {
  std::string s = kvbm::to_string(kind);
  if (kind == StorageKind::Device) s += "(" + std::to_string(id) + ")";
  if (kind == StorageKind::Disk) s += "(fd " + std::to_string(id) + ")";
  return s;
}

}  // namespace kvbm
