#include "xfer/backends/ucx/file_service.h"

#include <cstring>
#include <utility>
#include <vector>

#include "kvbm/log.h"
#include "xfer/backends/ucx/file_am.h"

namespace kvbm::xfer::detail::ucx {

void FileService::on_request(std::string_view header, const char* body, size_t len, bool rndv,
                             ucp_ep_h reply_ep) {
  auto h = decode_file_request(header);
  if (!h || reply_ep == nullptr) {
    log(LogLevel::Warn, "UCX: dropped a file request: " +
                            (h ? std::string("no reply endpoint") : h.error().message));
    return;
  }
  const uint64_t want = h->op == Op::Write ? h->len : 0;
  if (rndv || len != want) {
    send_reply(reply_ep, {h->xfer, h->seq, ErrorCode::Remote}, nullptr, 0, nullptr,
               "malformed file request");
    return;
  }
  FileJob job{next_job_++, *h, Staging(nullptr, {&server_}), {}};
  if (h->op == Op::Write) {
    // The bytes live only as long as this callback: without a staging buffer for them
    // now, the initiator sends them again later.
    bool at_cap = false;
    job.data = server_.acquire(&at_cap);
    if (!job.data && at_cap) {
      send_reply(reply_ep, {h->xfer, h->seq, std::nullopt, true}, nullptr, 0, nullptr);
      return;
    }
    if (!job.data) {
      send_reply(reply_ep, {h->xfer, h->seq, ErrorCode::AllocationFailed}, nullptr, 0, nullptr,
                 "no staging memory at the owner");
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
  while (!waiting_.empty()) {
    FileJob& j = waiting_.front();
    auto reply = replies_.find(j.id);
    if (reply == replies_.end()) {  // its peer is gone
      waiting_.pop_front();
      continue;
    }
    if (j.h.op == Op::Read) {
      bool at_cap = false;
      j.data = server_.acquire(&at_cap);
      if (!j.data && at_cap) break;  // until a reply frees one
      if (!j.data) {
        send_reply(reply->second, {j.h.xfer, j.h.seq, ErrorCode::AllocationFailed}, nullptr, 0,
                   nullptr,
                   "no staging buffer for file fd " + std::to_string(j.h.fd) + " offset " +
                       std::to_string(j.h.offset));
        replies_.erase(reply);
        waiting_.pop_front();
        ++events;
        continue;
      }
    }
    ready.push_back(std::move(j));
    waiting_.pop_front();
  }
  thread_.submit(ready);
  return events;
}

// Sends the replies of the jobs the serving thread has done: a READ's bytes from its
// staging buffer (back to the pool once sent), or the error that names file and offset.
size_t FileService::reply_jobs() {
  size_t events = 0;
  for (FileJob& j : thread_.take_done()) {
    ++events;
    auto reply = replies_.find(j.id);
    if (reply == replies_.end()) continue;  // its peer is gone
    const ucp_ep_h ep = reply->second;
    replies_.erase(reply);
    const FileRequestHeader& h = j.h;
    if (!j.status) {
      const Error& e = j.status.error();
      send_reply(ep, {h.xfer, h.seq, e.code}, nullptr, 0, nullptr,
                 e.message.substr(0, kMaxFileErrorBytes));
    } else if (h.op == Op::Write) {
      send_reply(ep, {h.xfer, h.seq, std::nullopt}, nullptr, 0, nullptr);
    } else {
      const char* data = j.data.get();
      send_reply(ep, {h.xfer, h.seq, std::nullopt}, data, h.len, std::move(j.data));
    }
  }
  return events;
}

void FileService::send_reply(ucp_ep_h ep, const FileReplyHeader& h, const char* body, size_t len,
                             Staging keep, std::string error_text) {
  auto ctx = std::make_unique<FileSendCtx>();
  ctx->header = encode(h);
  ctx->error_text = std::move(error_text);
  ctx->keep = std::move(keep);
  // The staging buffer goes back to the pool with ctx, once the reply has left.
  send_file_am(ep, kFileReplyAmId, std::move(ctx), body, len, false);
}

void FileService::forget_endpoint(ucp_ep_h ep) {
  std::erase_if(replies_, [&](const auto& r) { return r.second == ep; });
}

void FileService::clear() {
  waiting_.clear();
  replies_.clear();
}

}  // namespace kvbm::xfer::detail::ucx
