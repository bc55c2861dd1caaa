#include "kvbm/remote/remote_storage.h"

#include "kvbm/xfer/mem_type.h"

namespace kvbm {
namespace {

Status check_range(size_t offset, size_t size, size_t total) {
  // offset + size > total, without overflowing.
  if (offset > total || size > total - offset) {
    return err(ErrorCode::OutOfBounds, "offset ", offset, " + size ", size,
               " exceeds storage size ", total);
  }
  return {};
}

}  // namespace

Result<RemoteStorage> RemoteStorage::from_storage_with_offset(const Storage& storage, size_t offset,
                                                              size_t size) {
  // A description of memory elsewhere has no local region; its sub-range is a slice.
  if (const auto* remote = dynamic_cast<const RemoteStorage*>(&storage)) {
    return remote->slice(offset, size);
  }
  auto whole = xfer::desc_list_of(storage);
  if (!whole) return whole.error();
  KVBM_TRY(check_range(offset, size, storage.size()));
  const xfer::Desc& d = whole->descs.front();
  return RemoteStorage(d.addr + offset, size, whole->type, d.dev_id);
}

Result<RemoteStorage> RemoteStorage::slice(size_t offset, size_t size) const {
  KVBM_TRY(check_range(offset, size, size_));
  return RemoteStorage(addr_ + offset, size, mem_type_, device_id_);
}

}  // namespace kvbm
