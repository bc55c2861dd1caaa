// Aliases of a Layout: layouts over the same bytes that own nothing.
//
//   alias_layout   the same config, kind and order over the same regions: lets a block
//                  manager take a layout its caller keeps owning (an inference engine's
//                  paged KV cache given as G1, kvbm/pool/external_g1.h).
//   layer_aliases  one single-layer layout per layer of a LayerSeparate layout, so that
//                  one engine request can copy one layer of many blocks (layer-wise
//                  loads). Region i of the source becomes the only region of alias i.
//
// An alias's storages report the source regions' type, address and size; for Disk the
// type carries the file descriptor, so copies through an alias read and write the same
// file. Ownership: the source layout must outlive its aliases (nothing checks it), and
// aliases are never registered with an agent. Thread safety: as Layout.
#pragma once

#include <vector>

#include "kvbm/export.h"
#include "kvbm/layout.h"
#include "kvbm/result.h"

namespace kvbm {

/// A layout over `layout`'s bytes that owns nothing. InvalidArgument for a remote layout (a
/// peer's regions are not this process's memory).
KVBM_API Result<Layout> alias_layout(const Layout& layout);

/// One single-layer alias per layer. InvalidArgument for a remote layout or one that is
/// not LayerSeparate (a fully contiguous layout interleaves the layers of a block in one
/// region).
KVBM_API Result<std::vector<Layout>> layer_aliases(const Layout& layout);

}  // namespace kvbm
