// The ceilings `kvbm demo` puts next to each path, measured in the same run on the same
// byte count: the fastest plain copy of that many bytes between the same two places.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"

namespace kvbm::tools::demo {

struct Ceiling {
  double gbps = 0;
  std::string name;
};

// bytes / the fastest of `reps` runs of `fn`, in GB/s (1e9 B/s).
Result<double> best_gbps(size_t bytes, int reps, const std::function<Status()>& fn);

// A copy between two host buffers on `threads` threads started once (as the host path's
// are): the fastest of one memcpy per thread, 1 MiB memcpys and 1 MiB streaming-store
// copies (the threads taking pieces in turn).
Result<Ceiling> host_copy_ceiling(size_t bytes, size_t threads, int reps);

// One cudaMemcpy of `bytes` between pinned memory and GPU 0, each direction.
struct CudaCeilings {
  Ceiling to_host, to_device;
};
Result<CudaCeilings> cuda_ceilings(size_t bytes, int reps);

// Writing, then reading, one buffer of `bytes` sequentially through a file made in `dir` the
// way the Disk tier makes its files (so O_DIRECT exactly when the Disk tier has it): the
// fastest of one pwrite/pread of the whole buffer and 1 MiB ops through one io_uring, 64 in
// flight, from a plain buffer and (where the kernel allows) from a fixed buffer.
struct DiskCeilings {
  Ceiling write, read;
};
Result<DiskCeilings> disk_ceilings(const std::filesystem::path& dir, size_t bytes, int reps);

// One agent WRITE of one contiguous `bytes` region into the peer's registered region at
// `remote_addr` (a scratch buffer, not its blocks).
Result<Ceiling> remote_ceiling(xfer::Agent& agent, const std::string& peer, uint64_t remote_addr,
                               size_t bytes, int reps);

}  // namespace kvbm::tools::demo
