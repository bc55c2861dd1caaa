// The owner's file I/O for peers, off the UCX backend's lock: the progress path hands
// it checked-out jobs (each with its staging buffer), this thread checks each against
// the served regions and streams them through the server's io_uring (each starts as it
// arrives, while others run, and ends on its own), and the progress path takes them
// back, done, to send the replies (UCX calls stay there).
//
// Thread safety: submit(), take_done() and stop() may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "kvbm/result.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer::detail {

// One peer's chunk request, from its arrival until its reply is sent.
struct FileJob {
  uint64_t id = 0;  // the backend's: which reply endpoint
  FileRequestHeader h;
  Staging data{nullptr, {}};  // READ: the bytes read; WRITE: the bytes to write
  Status status;              // set once served
};

class FileServingThread {
 public:
  explicit FileServingThread(FileServer& server) : server_(server) {}
  ~FileServingThread() { stop(); }
  FileServingThread(const FileServingThread&) = delete;
  FileServingThread& operator=(const FileServingThread&) = delete;

  // Queues the jobs (moved from; left empty); starts the thread on first use. After
  // stop(), jobs are dropped.
  void submit(std::vector<FileJob>& jobs);
  // The jobs served since the last call, each with its status.
  std::vector<FileJob> take_done();
  // Lets the jobs in progress finish (a disk's I/O cannot be called back), drops the
  // jobs not started and the ones done, and joins the thread.
  void stop();

 private:
  void loop();

  FileServer& server_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<FileJob> queue_, done_;
  std::atomic<bool> has_done_{false};  // done_ is not empty (read without mu_)
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace kvbm::xfer::detail
