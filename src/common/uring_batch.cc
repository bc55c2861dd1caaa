#include "common/uring_batch.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvbm/log.h"

namespace kvbm::detail {
namespace {

constexpr uint64_t kDirectAlign = 4096;
// Ops longer than this go as parts of it, in flight together: one op of a long run kept
// one I/O in flight (the demo's 64 MiB host -> disk: 0.80 of 1 MiB writes at queue depth
// 64 on the build machine, 0.98-1.02 in parts).
constexpr uint64_t kPartBytes = uint64_t{1} << 20;
constexpr unsigned kMaxDepth = 4096;
// Fixed buffer slots of one ring, and the kernel's largest fixed buffer.
constexpr unsigned kFixedSlots = 1024;
constexpr uint64_t kMaxFixedPiece = uint64_t{1} << 30;

bool aligned(const void* buf, uint64_t offset, uint64_t len) {
  return (reinterpret_cast<uintptr_t>(buf) | offset | len) % kDirectAlign == 0;
}

std::string fd_path(int fd) {
  char link[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char buf[4096];
  const ssize_t n = ::readlink(link, buf, sizeof(buf) - 1);
  if (n <= 0) return {};
  return std::string(buf, static_cast<size_t>(n));
}

std::string describe_fd(int fd) {
  std::string s = "fd " + std::to_string(fd);
  const std::string path = fd_path(fd);
  if (!path.empty()) s += " (" + path + ")";
  return s;
}

const char* kind_name(FileOp::Kind k) {
  return k == FileOp::Kind::Read ? "read" : "write";
}

Error op_error(const FileOp& op, uint64_t done, const std::string& what) {
  std::string at;
  if (done != 0) at = " (after " + std::to_string(done) + " bytes)";
  return err(ErrorCode::Io, kind_name(op.kind), " ", describe_fd(op.fd), " offset ", op.offset,
             " len ", op.len, at, ": ", what);
}

}  // namespace

Result<std::unique_ptr<UringBatch>> UringBatch::create(unsigned queue_depth) {
  if (queue_depth == 0 || queue_depth > kMaxDepth) {
    return err(ErrorCode::InvalidArgument, "io_uring queue_depth ", queue_depth, " must be in 1..",
               kMaxDepth);
  }
  auto ring = std::make_unique<io_uring>();
  const int rc = io_uring_queue_init(queue_depth, ring.get(), 0);
  if (rc < 0) {
    return err(ErrorCode::Io, "io_uring_queue_init(", queue_depth, "): ", std::strerror(-rc));
  }
  return std::unique_ptr<UringBatch>(new UringBatch(std::move(ring), queue_depth));
}

UringBatch::UringBatch(std::unique_ptr<io_uring> ring, unsigned depth)
    : ring_(std::move(ring)), depth_(depth) {}

UringBatch::~UringBatch() {
  for (auto& [fd, twin] : twins_) ::close(twin.fd);
  io_uring_queue_exit(ring_.get());
}

void UringBatch::forget_fd(int fd) {
  auto it = twins_.find(fd);
  if (it == twins_.end()) return;
  ::close(it->second.fd);
  twins_.erase(it);
}

bool UringBatch::add_fixed(const void* base, uint64_t len) {
  const auto b = reinterpret_cast<uintptr_t>(base);
  if (b == 0 || len == 0) return false;
  std::lock_guard<std::mutex> lock(fixed_mu_);
  if (regions_.count(b) != 0) return true;
  auto refuse = [&](const std::string& why) {
    if (!fixed_refused_) {
      fixed_refused_ = true;
      log(LogLevel::Info, "io_uring fixed buffers refused (" + why +
                              "): file I/O into such memory pins its pages on every request");
    }
    return false;
  };
  auto why = [](int rc) {
    return std::string(std::strerror(-rc)) +
           (rc == -ENOMEM ? "; RLIMIT_MEMLOCK bounds them without CAP_IPC_LOCK" : "");
  };
  if (!fixed_table_) {
    const int rc = io_uring_register_buffers_sparse(ring_.get(), kFixedSlots);
    if (rc < 0) return refuse("a table of " + std::to_string(kFixedSlots) + ": " + why(rc));
    fixed_table_ = true;
    for (unsigned i = kFixedSlots; i > 0; --i) free_slots_.push_back(i - 1);
  }
  const uint64_t pieces = (len + kMaxFixedPiece - 1) / kMaxFixedPiece;
  if (pieces > free_slots_.size()) {
    return refuse("all " + std::to_string(kFixedSlots) + " slots of the ring in use");
  }
  std::vector<uintptr_t> added;
  for (uint64_t off = 0; off < len; off += kMaxFixedPiece) {
    const uint64_t n = std::min(kMaxFixedPiece, len - off);
    const unsigned slot = free_slots_.back();
    iovec iov{reinterpret_cast<void*>(b + off), static_cast<size_t>(n)};
    __u64 tag = 0;
    const int rc = io_uring_register_buffers_update_tag(ring_.get(), slot, &iov, &tag, 1);
    if (rc < 0) {
      for (uintptr_t piece : added) clear_piece(piece);
      return refuse(std::to_string(n) + " bytes: " + why(rc));
    }
    free_slots_.pop_back();
    fixed_.emplace(b + off, Fixed{n, slot});
    added.push_back(b + off);
  }
  regions_.emplace(b, std::move(added));
  return true;
}

void UringBatch::remove_fixed(const void* base) {
  std::lock_guard<std::mutex> lock(fixed_mu_);
  auto it = regions_.find(reinterpret_cast<uintptr_t>(base));
  if (it == regions_.end()) return;
  for (uintptr_t piece : it->second) clear_piece(piece);
  regions_.erase(it);
}

void UringBatch::clear_piece(uintptr_t piece) {
  iovec none{nullptr, 0};
  __u64 tag = 0;
  const unsigned slot = fixed_.at(piece).slot;
  // An empty entry; the kernel keeps the old pages pinned until I/O in flight on them ends.
  (void)io_uring_register_buffers_update_tag(ring_.get(), slot, &none, &tag, 1);
  free_slots_.push_back(slot);
  fixed_.erase(piece);
}

size_t UringBatch::fixed_count() const {
  std::lock_guard<std::mutex> lock(fixed_mu_);
  return fixed_.size();
}

int UringBatch::fixed_slot(const char* p, uint64_t len) const {
  std::lock_guard<std::mutex> lock(fixed_mu_);
  if (fixed_.empty()) return -1;
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = fixed_.upper_bound(a);
  if (it == fixed_.begin()) return -1;
  --it;
  if (a - it->first > it->second.len || len > it->second.len - (a - it->first)) return -1;
  return static_cast<int>(it->second.slot);
}

Result<int> UringBatch::buffered_twin(int fd, int flags, dev_t dev, ino_t ino) {
  auto it = twins_.find(fd);
  if (it != twins_.end()) {
    if (it->second.dev == dev && it->second.ino == ino) return it->second.fd;
    // The fd number was closed and reused without forget_fd: the twin is of another file.
    ::close(it->second.fd);
    twins_.erase(it);
  }
  char link[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  const int twin = ::open(link, (flags & O_ACCMODE) | O_CLOEXEC);
  if (twin < 0) {
    const int e = errno;
    return err(ErrorCode::Io, "reopening ", describe_fd(fd),
               " without O_DIRECT: ", std::strerror(e));
  }
  twins_.emplace(fd, Twin{twin, dev, ino});
  log(LogLevel::Info, describe_fd(fd) +
                          ": I/O not aligned to 4096 bytes (or refused by direct I/O) goes "
                          "through a buffered twin of the file");
  return twin;
}

Status UringBatch::run(std::span<const FileOp> ops) {
  constexpr uint64_t kRunGroup = UINT64_MAX;
  KVBM_TRY(add(kRunGroup, ops));
  for (;;) {
    for (Finished& f : progress(true)) {
      if (f.group == kRunGroup) return std::move(f.status);
    }
  }
}

Status UringBatch::add(uint64_t group, std::span<const FileOp> ops) {
  if (broken_) return *broken_;
  if (groups_.count(group) != 0) {
    return err(ErrorCode::InvalidArgument, "io_uring group ", group, " has not finished");
  }
  // What the group learns about each distinct fd once (not per op).
  struct FdInfo {
    int flags;
    dev_t dev;
    ino_t ino;
    int twin = -1;  // buffered twin, opened on first need
  };
  std::unordered_map<int, FdInfo> fds;
  std::vector<Slot> staged;
  for (const FileOp& op : ops) {
    if (op.len == 0) continue;
    if (op.buf == nullptr) return op_error(op, 0, "null buffer");
    if (op.offset > static_cast<uint64_t>(INT64_MAX) - op.len) {
      return err(ErrorCode::InvalidArgument, kind_name(op.kind), " fd ", op.fd, " offset ",
                 op.offset, " + len ", op.len, " overflows a file offset");
    }
    auto it = fds.find(op.fd);
    if (it == fds.end()) {
      const int flags = ::fcntl(op.fd, F_GETFL);
      struct stat st {};
      if (flags < 0 || ::fstat(op.fd, &st) != 0) return op_error(op, 0, std::strerror(errno));
      it = fds.emplace(op.fd, FdInfo{flags, st.st_dev, st.st_ino}).first;
    }
    FdInfo& info = it->second;
    const bool wants_direct = (info.flags & O_DIRECT) != 0;
    for (uint64_t begin = 0; begin < op.len; begin += kPartBytes) {
      const uint64_t len = std::min(kPartBytes, op.len - begin);
      Slot slot{&op,
                group,
                begin,
                len,
                0,
                op.fd,
                wants_direct && aligned(static_cast<char*>(op.buf) + begin, op.offset + begin, len),
                info.flags,
                info.dev,
                info.ino};
      if (wants_direct && !slot.direct) {
        if (info.twin < 0) {
          auto twin = buffered_twin(op.fd, info.flags, info.dev, info.ino);
          if (!twin) return twin.error();
          info.twin = *twin;
        }
        slot.fd = info.twin;
      }
      staged.push_back(slot);
    }
  }
  if (staged.empty()) {
    finished_.push_back({group, {}});
    return {};
  }
  groups_.emplace(group, Group{staged.size(), std::nullopt});
  for (const Slot& slot : staged) {
    size_t i = slots_.size();
    if (free_.empty()) {
      slots_.push_back(slot);
    } else {
      i = free_.back();
      free_.pop_back();
      slots_[i] = slot;
    }
    queue_.push_back(i);
  }
  return {};
}

std::vector<UringBatch::Finished> UringBatch::progress(bool wait) {
  if (broken_) {
    progress_broken(wait);
    return std::exchange(finished_, {});
  }
  submit_queued();
  if (inflight_ > 0) {
    const int rc = io_uring_submit_and_wait(ring_.get(), wait && finished_.empty() ? 1 : 0);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      ring_failed(err(ErrorCode::Io, "io_uring_submit_and_wait: ", std::strerror(-rc),
                      " (the ring takes no more I/O)"));
    } else {
      reap();
      submit_queued();  // submitted by the next call, with the retries reap() prepared
    }
  }
  return std::exchange(finished_, {});
}

// The ring failed (io_uring_enter refused it): every group fails, and nothing is submitted
// any more. A group still finishes only once the kernel is done with its buffers: ops it
// never took end now; those it took end as their completions arrive in the completion
// queue, which stays readable without a system call.
void UringBatch::ring_failed(Error e) {
  broken_ = e;
  broken_at_ = std::chrono::steady_clock::now();
  for (auto& [group, g] : groups_) {
    if (!g.error) g.error = e;
  }
  io_uring_sq& sq = ring_->sq;
  const unsigned head = io_uring_smp_load_acquire(sq.khead);
  for (unsigned k = head; k != sq.sqe_tail; ++k) {
    const io_uring_sqe& sqe = sq.sqes[sq.array[k & sq.ring_mask]];
    --inflight_;
    end_op(static_cast<size_t>(sqe.user_data));
  }
  sq.sqe_head = sq.sqe_tail;
  submit_queued();  // ends the queued ops: their groups failed
}

void UringBatch::progress_broken(bool wait) {
  if (abandoned_) return;  // late completions stay in the queue, unread
  reap();
  submit_queued();
  if (inflight_ == 0) return;
  if (std::chrono::steady_clock::now() - broken_at_ >= failure_grace_) {
    // The kernel kept ops past the grace time: their groups end now, though their buffers
    // may still be written (until the ring is destroyed, which cancels them).
    const Error e = err(ErrorCode::Io, broken_->message, "; ", inflight_,
                        " ops still held by the kernel after ", failure_grace_.count(), " ms");
    for (auto& [group, g] : groups_) finished_.push_back({group, e});
    groups_.clear();
    abandoned_ = true;
    return;
  }
  // Nothing can block in the kernel on this ring: poll its completion queue.
  if (wait && finished_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void UringBatch::submit_queued() {
  while (inflight_ < depth_ && !queue_.empty()) {
    const size_t i = queue_.front();
    queue_.pop_front();
    if (groups_.at(slots_[i].group).error) {
      end_op(i);  // its group failed: not started
      continue;
    }
    prep(i);
  }
}

void UringBatch::prep(size_t i) {
  Slot& s = slots_[i];
  const FileOp& op = *s.op;
  io_uring* ring = ring_.get();
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) {  // cannot happen: at most depth_ unsubmitted entries
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  const uint64_t chunk = s.len - s.done;
  char* p = static_cast<char*>(op.buf) + s.begin + s.done;
  const uint64_t off = op.offset + s.begin + s.done;
  const auto n = static_cast<unsigned>(chunk);
  const int slot = s.no_fixed ? -1 : fixed_slot(p, chunk);
  s.fixed = slot >= 0;
  if (s.fixed) fixed_submissions_.fetch_add(1, std::memory_order_relaxed);
  if (op.kind == FileOp::Kind::Read) {
    if (slot >= 0) {
      io_uring_prep_read_fixed(sqe, s.fd, p, n, off, slot);
    } else {
      io_uring_prep_read(sqe, s.fd, p, n, off);
    }
  } else if (slot >= 0) {
    io_uring_prep_write_fixed(sqe, s.fd, p, n, off, slot);
  } else {
    io_uring_prep_write(sqe, s.fd, p, n, off);
  }
  io_uring_sqe_set_data64(sqe, i);
  ++inflight_;
}

Status UringBatch::to_buffered(size_t i) {
  Slot& s = slots_[i];
  auto twin = buffered_twin(s.op->fd, s.flags, s.dev, s.ino);
  if (!twin) return twin.error();
  s.fd = *twin;
  s.direct = false;
  return {};
}

void UringBatch::end_op(size_t i) {
  auto g = groups_.find(slots_[i].group);
  if (--g->second.left == 0) {
    finished_.push_back({g->first, g->second.error ? Status(*g->second.error) : Status()});
    groups_.erase(g);
  }
  free_.push_back(i);
}

void UringBatch::reap() {
  io_uring* ring = ring_.get();
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(ring, &cqe) == 0 && cqe != nullptr) {
    const size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    --inflight_;
    Slot& s = slots_[i];
    const FileOp& op = *s.op;
    Group& g = groups_.at(s.group);
    auto fail = [&](Error e) {
      if (!g.error) g.error = std::move(e);
    };
    bool again = false;
    if (res == -EINTR || res == -EAGAIN) {
      again = true;
    } else if (res == -EFAULT && s.fixed) {
      // remove_fixed() (another thread) emptied the slot between prep() and the kernel's
      // look at it; the memory itself is still the caller's: go on with plain I/O.
      s.no_fixed = true;
      again = true;
    } else if (res == -EINVAL && s.direct) {
      // The device wants a larger alignment than 4096 (or refuses O_DIRECT): go buffered.
      Status st = to_buffered(i);
      if (st) {
        again = true;
      } else {
        fail(st.error());
      }
    } else if (res < 0) {
      fail(op_error(op, s.begin + s.done, std::strerror(-res)));
    } else if (res == 0) {
      const uint64_t at = s.begin + s.done;
      fail(op_error(op, at,
                    op.kind == FileOp::Kind::Read
                        ? "read past end of file at offset " + std::to_string(op.offset + at)
                        : std::string("write made no progress")));
    } else {
      s.done += static_cast<uint64_t>(res);
      if (s.done < s.len) {
        again = true;
        if (s.direct && !aligned(static_cast<char*>(op.buf) + s.begin + s.done,
                                 op.offset + s.begin + s.done, s.len - s.done)) {
          if (Status st = to_buffered(i); !st) {
            fail(st.error());
            again = false;
          }
        }
      }
    }
    if (again && !g.error) {
      prep(i);  // the rest, or a retry: room is there, this op's entry just left
    } else {
      end_op(i);
    }
  }
}

}  // namespace kvbm::detail
