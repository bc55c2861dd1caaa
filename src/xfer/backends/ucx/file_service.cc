#include "xfer/backends/ucx/file_service.h"

#include <cstring>
#include <utility>
#include <vector>

#include "kvbm/log.h"

namespace kvbm::xfer::detail::ucx {

using staging::reply;

void FileService::on_request(std::string_view header, const char* body, size_t len, bool rndv,
                             ucp_ep_h reply_ep) {
  auto h = staging::decode_chunk_request(header, kFileChunkBytes);
  if (!h || reply_ep == nullptr) {
    log(LogLevel::Warn, "UCX: dropped a file request: " +
                            (h ? std::string("no reply endpoint") : h.error().message));
    return;
  }
  const uint64_t want = h->op == Op::Write ? h->len : 0;
  if (rndv || len != want || h->space != MemType::File) {
    send_reply(reply_ep, reply({h->xfer, h->seq, ErrorCode::Remote}, "malformed file request"));
    return;
  }
  FileJob job{next_job_++, *h, staging::Buffer(nullptr, {&pool_}), {}};
  if (h->op == Op::Write) {
    // The bytes live only as long as this callback: without a staging buffer for them
    // now, the initiator sends them again later.
    bool at_cap = false;
    job.data = pool_.acquire(&at_cap);
    if (!job.data && at_cap) {
      send_reply(reply_ep, reply({h->xfer, h->seq, std::nullopt, true}));
      return;
    }
    if (!job.data) {
      send_reply(reply_ep, reply({h->xfer, h->seq, ErrorCode::AllocationFailed},
                                 "no staging memory at the owner"));
      return;
    }
    std::memcpy(job.data.get(), body, len);
  }
  const auto now = staging::OwedReplies::Clock::now();
  owed_.heard(reply_ep, h->token, now);
  replies_[job.id] = {reply_ep, h->token};
  waiting_.push_back(std::move(job));
}

void FileService::on_poll(std::string_view header, ucp_ep_h reply_ep) {
  auto p = staging::decode_chunk_poll(header);
  if (!p || reply_ep == nullptr) {
    log(LogLevel::Warn,
        "UCX: dropped a file poll: " + (p ? std::string("no reply endpoint") : p.error().message));
    return;
  }
  // Inside the poll's callback: reply_ep is valid until it returns. Eager, as the requests
  // (file_client.cc).
  staging::answer_poll(owed_, reply_ep, p->token, kFileReplyAmId, UCP_AM_SEND_FLAG_EAGER);
}

void FileService::owe(uint64_t id, staging::OwedReplies::Reply r) {
  auto found = replies_.find(id);
  if (found == replies_.end()) return;  // its peer is gone
  owed_.add(found->second.ep, found->second.token, std::move(r),
            staging::OwedReplies::Clock::now());
  replies_.erase(found);
}

// Hands the waiting jobs to the serving thread, in order; a READ first gets its staging
// buffer, and waits (with those behind it) while all of them are in use.
size_t FileService::start_jobs() {
  size_t events = 0;
  std::vector<FileJob> ready;
  staging::admit(
      waiting_, pool_, [](const FileJob& j) { return j.h.op == Op::Read; },
      [&](FileJob&& j, staging::Buffer b) {
        if (!replies_.contains(j.id)) return;  // its peer is gone
        if (b) j.data = std::move(b);
        ready.push_back(std::move(j));
      },
      [&](FileJob&& j) {
        owe(j.id, {{j.h.xfer, j.h.seq, ErrorCode::AllocationFailed},
                   "no staging buffer for file fd " + std::to_string(j.h.dev) + " offset " +
                       std::to_string(j.h.addr)});
        ++events;
      });
  thread_.submit(ready);
  return events;
}

// Owes the replies of the jobs the serving thread has done: a READ's bytes in its staging
// buffer (back to the pool once sent), or the error that names file and offset.
size_t FileService::reply_jobs() {
  size_t events = 0;
  for (FileJob& j : thread_.take_done()) {
    ++events;
    const staging::ChunkRequest& h = j.h;
    staging::OwedReplies::Reply r;
    r.h = {h.xfer, h.seq, std::nullopt};
    if (!j.status) {
      r.h.error = j.status.error().code;
      r.error_text = j.status.error().message;
    } else if (h.op == Op::Read) {
      r.bytes = std::move(j.data);
      r.len = h.len;
    }
    owe(j.id, std::move(r));
  }
  return events + owed_.expire_due(staging::OwedReplies::Clock::now());
}

void FileService::send_reply(ucp_ep_h ep, staging::Message m) {
  // Eager, as the requests (file_client.cc).
  staging::send(ep, kFileReplyAmId, std::move(m), nullptr, 0, UCP_AM_SEND_FLAG_EAGER);
}

void FileService::forget_endpoint(ucp_ep_h ep) {
  std::erase_if(replies_, [&](const auto& r) { return r.second.ep == ep; });
  owed_.forget(ep);
}

void FileService::clear() {
  waiting_.clear();
  replies_.clear();
  owed_.clear();
}

}  // namespace kvbm::xfer::detail::ucx
