// The GDS backend: this agent's files (FILE regions: addr = offset, dev_id = fd) to and from
// its GPU memory (VRAM), either through cuFile (GPUDirect Storage, or cuFile's compat mode)
// or, where libcufile.so.0 or its driver is missing, bounced through a pinned host buffer
// with io_uring. libcufile is opened with dlopen at run time; builds never link it.
//
// Like POSIX, only transfers whose peer is the agent itself are served. The I/O runs on a
// worker thread; poll() never blocks. Not among the agent's default backends.
#pragma once

#include <memory>
#include <string>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: "mode" = "auto" (default: cuFile when it opens, else bounce) | "cufile" (cuFile
// or fail) | "bounce" (never cuFile); "queue_depth" (1..4096, default 64) and
// "bounce_bytes" (default 16 MiB, at least 1 MiB) for the bounce path; "cufile_threads"
// (1..64, default 8): cuFile calls in flight at once (they block; pieces are cut into
// 4 MiB slices for them).
// DeviceUnavailable without a GPU (or a CUDA build); InvalidArgument for bad params;
// Unsupported for mode=cufile where cuFile cannot open (naming why).
Result<std::unique_ptr<Backend>> make_gds_backend(const BackendEnv& env,
                                                  const BackendParams& params);

// "cufile" or "bounce" for a GDS backend (the path its transfers take); empty otherwise.
std::string gds_path(const Backend& backend);

}  // namespace kvbm::xfer::detail
