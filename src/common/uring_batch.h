// Batched file I/O through one io_uring (internal; used by the POSIX and GDS backends and by
// the transfer layer's file path).
//
// Thread safety: a UringBatch is not thread-safe; use one per thread or guard it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>

#include "kvbm/result.h"

struct io_uring;

namespace kvbm::detail {

struct FileOp {
  enum class Kind : uint8_t { Read, Write } kind;
  int fd;
  uint64_t offset;
  void* buf;
  uint64_t len;
};

class UringBatch {
 public:
  // InvalidArgument for queue_depth 0 or > 4096; Io (naming errno) when io_uring_queue_init
  // fails.
  static Result<std::unique_ptr<UringBatch>> create(unsigned queue_depth = 64);
  ~UringBatch();
  UringBatch(const UringBatch&) = delete;
  UringBatch& operator=(const UringBatch&) = delete;

  // Runs every op to completion, keeping up to queue_depth in flight: short reads/writes are
  // resubmitted for the rest, EINTR/EAGAIN retried. Direct I/O (O_DIRECT fd) is used when buf,
  // offset and len are aligned to 4096; otherwise the op goes through a buffered twin of the
  // fd (reopened via /proc/self/fd/N without O_DIRECT, cached per fd) and that fallback is
  // logged once per fd, not per op. Errors: Io naming the fd (and its path from /proc/self/fd
  // when readable), the offset, len and strerror: ENOSPC, EIO, EBADF (closed fd); a read that
  // hits end of file before len bytes is an Io error "read past end of file". After an error
  // the ops already in flight are drained before returning; other ops may or may not have run.
  Status run(std::span<const FileOp> ops);

  // Drops a cached buffered twin (call before closing fd).
  void forget_fd(int fd);

  unsigned queue_depth() const { return depth_; }

 private:
  struct Twin {
    int fd;
    dev_t dev;
    ino_t ino;
  };
  UringBatch(std::unique_ptr<io_uring> ring, unsigned depth);
  Result<int> buffered_twin(int fd, int flags, dev_t dev, ino_t ino);

  std::unique_ptr<io_uring> ring_;
  unsigned depth_;
  std::unordered_map<int, Twin> twins_;
};

}  // namespace kvbm::detail
