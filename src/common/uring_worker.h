// A thread that owns an io_uring (UringBatch) and streams groups of file ops through it
// (internal). A group submitted while others run joins the same queue at once and ends on
// its own, so the disk never idles between requests. The POSIX backend, the transfer
// engine's file path and the UCX backend's serving of files to peers each run one.
//
// Thread safety: every member may be called from any thread; cancel() not from a Done.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>

#include "common/uring_batch.h"
#include "kvbm/result.h"

namespace kvbm::detail {

class UringWorker {
 public:
  // Runs on the worker thread, no lock held, once every op of the group has ended or the
  // ring refused the group up front: ok, or the group's first error (UringBatch's Io and
  // InvalidArgument errors, naming the file and offset). It must not call cancel() or
  // destroy the worker.
  using Done = std::function<void(Status)>;

  // InvalidArgument or Io from UringBatch::create.
  static Result<std::unique_ptr<UringWorker>> create(unsigned queue_depth);
  // Runs every group submitted to its end, its Done included, then joins the thread.
  ~UringWorker();
  UringWorker(const UringWorker&) = delete;
  UringWorker& operator=(const UringWorker&) = delete;

  // Queues `ops` as one group. The ops and the memory they name must stay valid until
  // `done` has run or cancel() took the group out of the queue. Returns the group's
  // ticket, for cancel().
  uint64_t submit(std::span<const FileOp> ops, Done done);

  // Takes the group out of the queue if the worker has not started it (its Done then
  // never runs), else waits until its Done has returned. Returns at once for a ticket
  // that is done or unknown.
  void cancel(uint64_t ticket);

  // The ring, for its fixed buffers only (add_fixed() and remove_fixed() are thread-safe;
  // nothing else of it may be called from outside the worker).
  UringBatch& batch() { return *batch_; }

 private:
  explicit UringWorker(std::unique_ptr<UringBatch> batch);
  void run();

  struct Pending {
    uint64_t ticket;
    std::span<const FileOp> ops;
    Done done;
  };

  std::unique_ptr<UringBatch> batch_;  // add()/progress() on the worker only
  std::mutex mu_;
  std::condition_variable work_cv_;  // a group was queued, or stop_ set
  std::condition_variable done_cv_;  // groups left running_
  std::deque<Pending> queue_;
  std::map<uint64_t, Done> running_;  // by ticket (the ring's group id); changed by the worker
  uint64_t next_ticket_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: it starts once the members above exist
};

}  // namespace kvbm::detail
