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
  replies_[job.id] = reply_ep;
  waiting_.push_back(std::move(job));
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
        auto found = replies_.find(j.id);
        if (found == replies_.end()) return;  // its peer is gone
        send_reply(found->second, reply({j.h.xfer, j.h.seq, ErrorCode::AllocationFailed},
                                        "no staging buffer for file fd " + std::to_string(j.h.dev) +
                                            " offset " + std::to_string(j.h.addr)));
        replies_.erase(found);
        ++events;
      });
  thread_.submit(ready);
  return events;
}

// Sends the replies of the jobs the serving thread has done: a READ's bytes from its
// staging buffer (back to the pool once sent), or the error that names file and offset.
size_t FileService::reply_jobs() {
  size_t events = 0;
  for (FileJob& j : thread_.take_done()) {
    ++events;
    auto found = replies_.find(j.id);
    if (found == replies_.end()) continue;  // its peer is gone
    const ucp_ep_h ep = found->second;
    replies_.erase(found);
    const staging::ChunkRequest& h = j.h;
    if (!j.status) {
      const Error& e = j.status.error();
      send_reply(ep, reply({h.xfer, h.seq, e.code}, e.message));
    } else if (h.op == Op::Write) {
      send_reply(ep, reply({h.xfer, h.seq, std::nullopt}));
    } else {
      auto m = reply({h.xfer, h.seq, std::nullopt});
      const char* data = j.data.get();
      m.keep = std::move(j.data);  // back to the pool once the reply has left
      send_reply(ep, std::move(m), data, h.len);
    }
  }
  return events;
}

void FileService::send_reply(ucp_ep_h ep, staging::Message m, const char* body, size_t len) {
  // Eager, as the requests (file_client.cc).
  staging::send(ep, kFileReplyAmId, std::move(m), body, len, UCP_AM_SEND_FLAG_EAGER);
}

void FileService::forget_endpoint(ucp_ep_h ep) {
  std::erase_if(replies_, [&](const auto& r) { return r.second == ep; });
}

void FileService::clear() {
  waiting_.clear();
  replies_.clear();
}

}  // namespace kvbm::xfer::detail::ucx
