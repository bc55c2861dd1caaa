// The owner's side of remote file transfers: the FILE regions this agent serves to peers,
// and the reads and writes it does for them through a staging buffer (io_uring, direct
// I/O where aligned). Errors name the file, the offset and the length.
//
// Thread safety: none; the UCX backend calls it with its lock held.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "common/uring_batch.h"
#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

class FileServer;

// A page-aligned buffer of kFileChunkBytes that goes back to its server when dropped.
struct StagingFree {
  FileServer* server = nullptr;
  void operator()(char* p) const;
};
using Staging = std::unique_ptr<char, StagingFree>;

class FileServer {
 public:
  // Staging buffers in use at once, at most (READs wait for one; a WRITE's bytes have
  // arrived already and always get one).
  static constexpr size_t kMaxStaging = 64;

  FileServer() = default;
  ~FileServer();
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  // A FILE region (dev_id = fd, addr = offset) peers may read and write. The file the
  // fd refers to now is remembered: a number closed and reused for something else (a
  // socket, a pipe, another file) is refused rather than read.
  void add(const Desc& region);
  void remove(const Desc& region);
  // OutOfBounds unless [offset, offset + len) of fd lies inside one served region; Io
  // (naming fd and offset) when fd is closed or no longer the registered file.
  Status check(uint64_t fd, uint64_t offset, uint64_t len) const;

  // A staging buffer (reused; at most kKeepFree kept while idle), or null when
  // kMaxStaging are in use (unless beyond_limit) or memory is short.
  Staging acquire(bool beyond_limit = false);
  size_t in_use() const { return in_use_; }

  // Reads len bytes at offset into buf; Io errors (end of file, closed fd) name them.
  Status read(uint64_t fd, uint64_t offset, char* buf, uint64_t len);
  Status write(uint64_t fd, uint64_t offset, const char* buf, uint64_t len);

 private:
  friend struct StagingFree;
  static constexpr size_t kKeepFree = 8;
  void recycle(char* p);
  Status run(uint64_t fd, kvbm::detail::FileOp op);  // op.fd set from fd

  struct FileId {
    bool known;  // fstat worked at registration
    uint64_t dev, ino;
  };
  std::map<std::tuple<uint64_t, uint64_t, uint64_t>, FileId> regions_;  // fd, offset, len
  std::vector<char*> free_;
  size_t in_use_ = 0;
  std::unique_ptr<kvbm::detail::UringBatch> batch_;  // made on first use
};

}  // namespace kvbm::xfer::detail
