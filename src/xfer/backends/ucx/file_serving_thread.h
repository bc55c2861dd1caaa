// The owner's file I/O for peers, off the UCX backend's lock: the progress path hands
// it jobs (each with its staging buffer); each is checked against the served regions,
// which stay pinned while its I/O runs, and streams through one io_uring on its own
// thread (a UringWorker: each job starts as it arrives, while others run, and ends on
// its own); the progress path takes them back, done, to send the replies (UCX calls
// stay there).
//
// Thread safety: submit(), take_done() and stop() may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "common/uring_worker.h"
#include "kvbm/result.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/ucx_common/staging_pool.h"
#include "xfer/ucx_common/staging_wire.h"

namespace kvbm::xfer::detail {

// One peer's chunk request, from its arrival until its reply is sent.
struct FileJob {
  uint64_t id = 0;                    // the backend's: which reply endpoint
  staging::ChunkRequest h;            // dev: the fd; addr: the offset in the file
  staging::Buffer data{nullptr, {}};  // READ: the bytes read; WRITE: the bytes to write
  Status status;                      // set once served
};

class FileServingThread {
 public:
  explicit FileServingThread(FileServer& server) : server_(server) {}
  ~FileServingThread() { stop(); }
  FileServingThread(const FileServingThread&) = delete;
  FileServingThread& operator=(const FileServingThread&) = delete;

  // Starts the jobs (moved from; left empty); a job the server refuses (a range not
  // served, a closed fd) is done at once with that error. The thread and its ring start
  // on first use. After stop(), jobs are dropped.
  void submit(std::vector<FileJob>& jobs);
  // The jobs served since the last call, each with its status.
  std::vector<FileJob> take_done();
  // Lets every job submitted finish (a disk's I/O cannot be called back), drops them and
  // the ones done, and joins the thread.
  void stop();

 private:
  // A job while its I/O runs: the op the ring reads, the pin that keeps its region.
  struct Running {
    FileJob job;
    kvbm::detail::FileOp op;
    FileServer::Pin pin;
  };
  void finished(uint64_t id, Status st);  // the worker's Done

  FileServer& server_;
  std::mutex mu_;  // the members below
  std::unique_ptr<kvbm::detail::UringWorker> worker_;
  std::map<uint64_t, std::unique_ptr<Running>> running_;  // by a local id
  uint64_t next_ = 0;
  std::vector<FileJob> done_;
  std::atomic<bool> has_done_{false};  // done_ is not empty (read without mu_)
  bool stopping_ = false;
};

}  // namespace kvbm::xfer::detail
