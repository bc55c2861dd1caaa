// Batched file I/O through one io_uring (internal; used by the POSIX and GDS backends and by
// the transfer layer's file path).
//
// Two ways to use it: run() a list of ops to completion; or stream groups of ops (one per
// request, say) with add() and progress(), each group finishing on its own while later
// ones are added, so the queue never drains between requests.
//
// Thread safety: run(), add(), progress() and forget_fd() are not thread-safe; use one
// thread or guard them. add_fixed() and remove_fixed() may be called from any thread,
// also while I/O goes on.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

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

  // Runs every op to completion, keeping up to queue_depth in flight (an op longer than
  // 1 MiB as 1 MiB parts in flight together): short reads/writes are resubmitted for the
  // rest, EINTR/EAGAIN retried. Direct I/O (O_DIRECT fd) is used when buf,
  // offset and len are aligned to 4096; otherwise the op goes through a buffered twin of the
  // fd (reopened via /proc/self/fd/N without O_DIRECT, cached per fd) and that fallback is
  // logged once per fd, not per op. Errors: Io naming the fd (and its path from /proc/self/fd
  // when readable), the offset, len and strerror: ENOSPC, EIO, EBADF (closed fd); a read that
  // hits end of file before len bytes is an Io error "read past end of file". After an error
  // the ops already in flight are drained before returning; other ops may or may not have run.
  // Not while groups added with add() are unfinished.
  Status run(std::span<const FileOp> ops);

  // Streaming. add() checks a group's ops (as run() does before submitting anything:
  // InvalidArgument or Io, and then nothing of the group is queued) and queues them; they
  // must stay valid until the group finishes. InvalidArgument if `group` is unfinished.
  Status add(uint64_t group, std::span<const FileOp> ops);
  struct Finished {
    uint64_t group;
    Status status;  // the group's first error (its later ops were not started), or ok
  };
  // Submits queued ops while fewer than queue_depth are in flight and reaps completions;
  // with `wait`, first blocks until at least one completes (unless nothing is in flight).
  // Returns the groups that finished since the last call, a group once all its ops ended.
  std::vector<Finished> progress(bool wait);
  bool idle() const { return groups_.empty() && finished_.empty(); }

  // Drops a cached buffered twin (call before closing fd).
  void forget_fd(int fd);

  // Registers [base, base + len) with the ring as fixed buffers (pieces of at most 1 GiB):
  // ops whose bytes lie inside one piece then skip the kernel's pinning of their pages on
  // every I/O, CPU time per request (BENCHMARKS.md, "Figures behind the code").
  // The memory must stay mapped until remove_fixed(base); removing it while I/O into it
  // runs is safe (such an op goes on as plain I/O). Returns false where the kernel refuses
  // (RLIMIT_MEMLOCK without CAP_IPC_LOCK, a kernel before 5.19, the table full): those ops
  // then run as plain reads and writes, and the first refusal is logged.
  bool add_fixed(const void* base, uint64_t len);
  void remove_fixed(const void* base);
  size_t fixed_count() const;  // pieces registered now
  // Submissions (ops and their resubmitted rests) that went as fixed-buffer I/O, so far
  // (readable from any thread).
  uint64_t fixed_submissions() const { return fixed_submissions_.load(std::memory_order_relaxed); }

  unsigned queue_depth() const { return depth_; }

  // When io_uring_enter fails on the ring itself (not EINTR, EAGAIN, EBUSY), every group
  // fails with that Io error and add() refuses from then on; a group still finishes only
  // when the kernel is done with its buffers (ops it never took end at once), or, for ops
  // it holds longer than this grace time (default 10 s), with an error that says so.
  void set_failure_grace(std::chrono::milliseconds grace) { failure_grace_ = grace; }

 private:
  struct Twin {
    int fd;
    dev_t dev;
    ino_t ino;
  };
  struct Fixed {
    uint64_t len;
    unsigned slot;
  };
  // One part of an op of a group, from add() until it ends.
  struct Slot {
    const FileOp* op;
    uint64_t group;
    uint64_t begin;  // the part: [begin, begin + len) of the op
    uint64_t len;
    uint64_t done;  // bytes of the part
    int fd;         // the one the next submission uses: the op's, or its buffered twin
    bool direct;
    int flags;  // of op->fd, with dev and ino: what a buffered twin opened later needs
    dev_t dev;
    ino_t ino;
    bool fixed = false;     // the last submission went as fixed-buffer I/O
    bool no_fixed = false;  // its fixed buffer went away under it (EFAULT): plain from now
  };
  struct Group {
    size_t left;  // ops not ended
    std::optional<Error> error;
  };
  UringBatch(std::unique_ptr<io_uring> ring, unsigned depth);
  Result<int> buffered_twin(int fd, int flags, dev_t dev, ino_t ino);
  void prep(size_t slot);           // an SQE for the slot's next chunk
  void submit_queued();             // prep()s queued slots while the queue has room
  void reap();                      // handles every completion there is
  void end_op(size_t slot);         // the op is done (or failed): its group may finish
  Status to_buffered(size_t slot);  // the op goes on through the buffered twin
  // The fixed buffer slot holding [p, p + len), or -1.
  int fixed_slot(const char* p, uint64_t len) const;
  void clear_piece(uintptr_t piece);  // fixed_mu_ held
  void ring_failed(Error e);          // see set_failure_grace()
  void progress_broken(bool wait);    // progress() once the ring failed

  std::unique_ptr<io_uring> ring_;
  unsigned depth_;
  std::unordered_map<int, Twin> twins_;
  std::atomic<uint64_t> fixed_submissions_{0};
  std::vector<Slot> slots_;
  std::vector<size_t> free_;  // indices of slots_ not in use
  std::deque<size_t> queue_;  // slots waiting for room in the ring
  unsigned inflight_ = 0;     // SQEs prepared or submitted, not yet reaped
  std::unordered_map<uint64_t, Group> groups_;
  std::vector<Finished> finished_;  // not yet returned by progress()
  std::optional<Error> broken_;     // the ring failed: why
  std::chrono::steady_clock::time_point broken_at_;
  std::chrono::milliseconds failure_grace_{10'000};
  bool abandoned_ = false;  // the grace time passed: completions are no longer read

  mutable std::mutex fixed_mu_;                          // the members below
  bool fixed_table_ = false;                             // the sparse table exists
  bool fixed_refused_ = false;                           // the kernel said no once: logged
  std::map<uintptr_t, Fixed> fixed_;                     // by piece start
  std::map<uintptr_t, std::vector<uintptr_t>> regions_;  // add_fixed base -> its pieces
  std::vector<unsigned> free_slots_;
};

}  // namespace kvbm::detail
