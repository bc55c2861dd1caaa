// The owner's side of remote file transfers: the FILE regions this agent serves to peers,
// and the reads and writes it does for them through a staging buffer (io_uring, direct
// I/O where aligned). Errors name the file, the offset and the length.
//
// Thread safety: none; the UCX backend calls it with its lock held.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "common/uring_batch.h"
#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

// A page-aligned buffer of up to kFileChunkBytes, returned to its server when released.
struct StagingFree {
  void operator()(char* p) const;
};
using Staging = std::unique_ptr<char, StagingFree>;

class FileServer {
 public:
  // A FILE region (dev_id = fd, addr = offset) peers may read and write.
  void add(const Desc& region);
  void remove(const Desc& region);
  // OutOfBounds unless [offset, offset + len) of fd lies inside one served region.
  Status check(uint64_t fd, uint64_t offset, uint64_t len) const;

  // A staging buffer of kFileChunkBytes (reused; at most kKeepFree kept while idle).
  Staging acquire();
  void release(Staging s);

  // Reads len bytes at offset into buf; Io errors (end of file, closed fd) name them.
  Status read(uint64_t fd, uint64_t offset, char* buf, uint64_t len);
  Status write(uint64_t fd, uint64_t offset, const char* buf, uint64_t len);

 private:
  static constexpr size_t kKeepFree = 8;
  Status run(uint64_t fd, kvbm::detail::FileOp op);  // op.fd set from fd

  std::set<std::tuple<uint64_t, uint64_t, uint64_t>> regions_;  // fd, offset, len
  std::vector<Staging> free_;
  std::unique_ptr<kvbm::detail::UringBatch> batch_;  // made on first use
};

}  // namespace kvbm::xfer::detail
