#include "kvbm/xfer/mem_type.h"

namespace kvbm::xfer {

MemType mem_type_of(StorageType type) {
  switch (type.kind) {
    case StorageKind::System:
    case StorageKind::Pinned:
      return MemType::Dram;
    case StorageKind::Device:
      return MemType::Vram;
    case StorageKind::Disk:
      return MemType::File;
    case StorageKind::Remote:
    case StorageKind::Null:
      return MemType::Unknown;
  }
  return MemType::Unknown;
}

Result<DescList> desc_list_of(const Storage& storage) {
  const MemType type = mem_type_of(storage.type());
  if (type == MemType::Unknown) {
    return err(ErrorCode::InvalidArgument, storage.type().to_string(),
               " storage has no local memory to register");
  }
  const uint64_t dev = type == MemType::Dram ? 0 : storage.type().id;
  return DescList(type, {Desc{storage.addr(), storage.size(), dev}});
}

}  // namespace kvbm::xfer
