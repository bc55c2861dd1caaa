// BlockManagerConfig: the tiers of a block manager (kvbm/pool/block_manager.h), their sizes,
// and how blocks move between them.
//
// Environment overrides (apply_env_overrides; the block manager does not read the
// environment by itself):
//   KVBM_CPU_CACHE_GB   the G2 (host) tier's size in GiB (2^30 bytes; a decimal number,
//                       e.g. 0.5): g2_blocks = size / bytes of one block. 0: no G2 tier.
//   KVBM_DISK_CACHE_GB  the G3 (disk) tier's size in GiB, the same way: g3_blocks.
// Plain values: copy them freely.
#pragma once

#include "kvbm/export.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "kvbm/layout.h"
#include "kvbm/pool/events.h"
#include "kvbm/result.h"
#include "kvbm/transfer.h"

namespace kvbm {

/// How registered blocks move down the tiers (G1 -> G2 -> G3).
struct KVBM_API OffloadOptions {
  bool enabled = true;  ///< false: blocks stay where they are registered
  /// Blocks waiting to be offloaded, at most; past it new offloads are dropped (and
  /// counted), so registering never waits. A queued block is held (not evictable) until it
  /// is copied.
  size_t queue_capacity = 4096;
  /// Blocks per engine request (one request per tier pair per batch).
  size_t max_batch = 1024;
  /// The frequency filter in front of the disk: a block goes to G3 once it was hit
  /// (registered or matched) this many times. Counts halve every hit_decay_period.
  uint32_t disk_min_hits = 2;
  std::chrono::milliseconds hit_decay_period{std::chrono::minutes(1)};  ///< see disk_min_hits
  size_t filter_capacity = size_t{1} << 20;  ///< hashes the filter tracks
  /// Disk copies come from G1 directly instead of from G2 (G1 -> G2 goes on as before).
  bool g1_to_g3_bypass = false;
};

/// What BlockManager::create builds.
struct KVBM_API BlockManagerConfig {
  /// One block's shape, the same on every tier (num_blocks is ignored; page_size is the
  /// number of tokens per block).
  LayoutConfig block;
  LayoutKind kind = LayoutKind::FullyContiguous;  ///< every tier's layout kind
  /// Blocks per tier; 0 for G2 or G3 leaves that tier out. Tiers given as layouts to
  /// BlockManager::create take their size from the layout.
  ///@{
  size_t g1_blocks = 0;
  size_t g2_blocks = 0;
  size_t g3_blocks = 0;
  ///@}
  std::filesystem::path disk_dir;  ///< where G3's file goes (empty: the temp dir)
  /// G1 in GPU memory of this device when a GPU is usable (else host memory stands in, and
  /// G2 is plain instead of pinned host memory).
  bool use_gpu = true;
  int device = 0;                ///< the GPU ordinal for G1
  OffloadOptions offload;        ///< offload between the tiers
  EventCallback on_event;        ///< every tier's Stored/Removed events (kvbm/pool/events.h)
  TransferEngineOptions engine;  ///< the manager's transfer engine
};

/// Bytes of one block's payload: num_layers * outer_dim * chunk_bytes.
KVBM_API size_t block_bytes(const LayoutConfig& block);

/// Applies KVBM_CPU_CACHE_GB and KVBM_DISK_CACHE_GB (see above) when set. InvalidArgument
/// naming the variable and its value when it is not a non-negative number, or when
/// config.block is invalid.
KVBM_API Status apply_env_overrides(BlockManagerConfig& config);

}  // namespace kvbm
