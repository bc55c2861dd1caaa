// The CUDA backend: GPU memory (VRAM) as a first-class tier of the agent.
//
// - Within the agent: VRAM<->VRAM and VRAM<->DRAM (pinned or plain) as cudaMemcpyAsync on
//   per-device streams, the VRAM side's device current; completion by CUDA events.
// - Other processes on the same node: the exporter publishes each VRAM region's CUDA IPC
//   handle (cuda_info.h); the importer opens an allocation once per peer, caches the
//   mapping, and closes it when the peer is disconnected or its last region is dropped.
//   Copies then run as local ones.
// - Other hosts (Debian's UCX has no CUDA support), or any peer when "staged" is set:
//   chunks go through pools of pinned bounce buffers and UCX active messages on the
//   backend's own UCX worker. WRITE: device->bounce copy of chunk i+1 overlaps the send
//   of chunk i; the target copies each chunk into place and acknowledges it once the
//   copy completed. READ: the target copies a chunk out to its bounce buffer and sends
//   it; the initiator copies it into place. Every incoming range is checked against the
//   target's registered regions.
//
// CUDA has no messaging, so this backend carries no notifications: the agent sends a
// CUDA request's notification over another backend (UCX) once the request is Done,
// when the data is complete and visible at the target.
//
// Registers VRAM (validated: device memory of the ordinal given) and DRAM (nothing to
// pin; registration lets DRAM take part in VRAM transfers). Creation fails with
// DeviceUnavailable when there is no GPU.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: "staged" = "1" forces the staged path to every other process, even on this
// node (default "0"); "chunk_bytes" (default 2 MiB) and "bounce_buffers" (default 8, per
// direction) size the staged path's pinned pools; "streams" (default 4, 1..64): CUDA
// streams per device that copies within this node take in turn.
Result<std::unique_ptr<Backend>> make_cuda_backend(const BackendEnv& env,
                                                   const BackendParams& params);

}  // namespace kvbm::xfer::detail
