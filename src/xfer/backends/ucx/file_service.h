// Remote files, the owner's side of the chunked staging protocol: the FILE regions this
// agent serves (file_server.h), the chunk requests peers send for them, queued for the
// serving thread (file_serving_thread.h) that does the file I/O through a staging buffer
// (staging_pool.h) off the lock, and the replies (a READ's bytes ride along). READs queue
// for a staging buffer; a WRITE whose bytes find none is answered "busy" (its initiator
// resends it). A reply ready after the request's callback (every served chunk's) waits
// for the initiator's poll, and goes inside its callback (staging_owed.h says why).
//
// Thread safety: add() and remove() from any thread; the rest with the backend's lock held.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>

#include "kvbm/xfer/types.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_serving_thread.h"
#include "xfer/backends/ucx/file_wire.h"
#include "xfer/ucx_common/staging_am.h"
#include "xfer/ucx_common/staging_owed.h"
#include "xfer/ucx_common/staging_pool.h"

namespace kvbm::xfer::detail::ucx {

class FileService {
 public:
  // Staging buffers in use at once, at most, unless told otherwise: 64 MiB.
  static constexpr size_t kDefaultMaxStaging = 64;

  // max_staging: the staging buffers (kFileChunkBytes each) used at once.
  explicit FileService(size_t max_staging)
      : pool_(max_staging, kFileChunkBytes, kKeepFree, staging::host_allocator()) {}

  void add(const Desc& region) { server_.add(region); }
  // Without the backend's lock: waits for the serving thread's I/O on the file, if any.
  void remove(const Desc& region) { server_.remove(region); }

  // A peer's chunk request, queued (or answered at once: malformed, busy, no memory).
  void on_request(std::string_view header, const char* body, size_t len, bool rndv,
                  ucp_ep_h reply_ep);
  // A peer's poll: the replies owed to it go on `reply_ep`, then the poll's end.
  void on_poll(std::string_view header, ucp_ep_h reply_ep);
  bool has_waiting() const { return !waiting_.empty(); }
  // Hands the waiting jobs to the serving thread; returns the events handled.
  size_t start_jobs();
  // Owes the peers the replies of the jobs served (and drops what dead peers left);
  // returns the events handled.
  size_t reply_jobs();
  // Requests that came in on `ep` get no reply: it is about to go.
  void forget_endpoint(ucp_ep_h ep);
  // Without the backend's lock: stops the serving thread (its jobs name endpoints).
  void stop_thread() { thread_.stop(); }
  // Drops every job waiting and every reply owed (the backend shuts down).
  void clear();

 private:
  // Staging buffers kept while idle.
  static constexpr size_t kKeepFree = 8;

  // A reply without a body, sent at once (inside the callback of the request it answers).
  void send_reply(ucp_ep_h ep, staging::Message m);
  // Owes job `id`'s peer `r` (unless the peer is gone).
  void owe(uint64_t id, staging::OwedReplies::Reply r);

  // The endpoint and token a request came with: where its reply is owed.
  struct ReplyTo {
    ucp_ep_h ep;
    uint64_t token;
  };

  FileServer server_;  // thread-safe: also used by thread_ and by region destructors
  // Thread-safe: the serving thread drops the buffers of jobs it drops. Declared before
  // the jobs that hold its buffers.
  staging::Pool pool_;
  // Requests accepted and not yet answered: where their replies are owed, by job id. A
  // closed peer's entries go: its jobs then end without a reply.
  std::map<uint64_t, ReplyTo> replies_;
  staging::OwedReplies owed_;    // replies ready, waiting for their peers' polls
  std::deque<FileJob> waiting_;  // for the thread; READs wait here for staging
  uint64_t next_job_ = 1;
  FileServingThread thread_{server_};  // declared after server_: stops first
};

}  // namespace kvbm::xfer::detail::ucx
