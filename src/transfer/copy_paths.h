// The transfer engine's paths as a table: each entry names a TransferPath, the tier pairs
// it serves and how it starts a copy. A new tier pair is one entry in copy_paths()
// (copy_paths.cc); TransferEngine::path_for and copy only look the pair up.
//
// Thread safety: the table is immutable; a path's start() is as safe as the engine's copy().
#pragma once

#include <span>
#include <vector>

#include "kvbm/layout.h"
#include "kvbm/transfer.h"
#include "transfer/engine_state.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

// Host memory: System or Pinned.
bool is_host(StorageKind k);

// One validated copy request (validate_copy passed).
struct CopyArgs {
  const Layout& src;
  std::span<const size_t> src_ids;
  const Layout& dst;
  std::span<const size_t> dst_ids;
  const CopyOptions& options;
};

struct CopyPath {
  TransferPath id;
  // Whether it moves blocks from local storage of type `s` to local storage of type `d`.
  bool (*serves)(const StorageType& s, const StorageType& d);
  // Starts the copy; errors are the path's (engine creation, submission, the agent's).
  Result<Transfer> (*start)(EngineState& state, const CopyArgs& args);
};

// The paths between two local layouts, in the order they are tried.
const std::vector<CopyPath>& copy_paths();
// The path where one layout is a peer's: through the agent (CopyOptions::agent).
const CopyPath& remote_copy_path();

}  // namespace kvbm::detail
