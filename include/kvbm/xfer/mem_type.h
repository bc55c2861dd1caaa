// How storages map onto the agent's memory types (the seed's StorageType::nixl_mem_type).
#pragma once

#include "kvbm/export.h"

#include "kvbm/result.h"
#include "kvbm/storage/storage.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer {

/// System, Pinned -> DRAM; Device -> VRAM; Disk -> FILE; Remote, Null -> UNKNOWN.
KVBM_API MemType mem_type_of(StorageType type);

/// The descriptor of a storage's whole region: its address (0 for files), size, and
/// device id (0 for host memory, the CUDA ordinal for GPU memory, the fd for files).
/// InvalidArgument for storages that are not local memory (Remote, Null).
KVBM_API Result<DescList> desc_list_of(const Storage& storage);

}  // namespace kvbm::xfer
