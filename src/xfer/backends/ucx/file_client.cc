#include "xfer/backends/ucx/file_client.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kvbm/log.h"
#include "xfer/backends/ucx/file_am.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::ucx {
namespace {

// A file chunk the owner was too busy for is resent after this wait, doubled on each
// "busy" in a row (a staging buffer frees within one chunk's disk I/O, but each resend
// carries the chunk's bytes again), and the transfer keeps one chunk in flight until the
// owner takes one again.
constexpr std::chrono::microseconds kFileResendFirst{100};
constexpr std::chrono::microseconds kFileResendMax{20000};

}  // namespace

void FileClient::fail(FileXfer& x, Error e) {
  if (x.c->state.load() == XferState::InProgress) backend_.fail(x.c.get(), std::move(e));
  xfers_.erase(x.id);
}

void FileClient::start(const std::shared_ptr<FileXfer>& x) {
  xfers_[x->id] = x;
  pump(x);
}

void FileClient::pump(const std::shared_ptr<FileXfer>& x) {
  const auto& chunks = *x->chunks;
  UcxPeer& peer = *x->c->peer;
  while (x->in_flight < x->window && x->c->state.load() == XferState::InProgress) {
    uint64_t seq = 0;
    if (!x->resend.empty()) {
      // The owner was busy: nothing new goes before the resent chunks, nor before their time.
      if (std::chrono::steady_clock::now() < x->resend_at) break;
      seq = x->resend.front();
    } else if (x->next < chunks.size()) {
      seq = x->next;
    } else {
      break;
    }
    if (peer.failure || peer.ep == nullptr) {
      fail(*x, err(ErrorCode::Remote, "agent '", peer.name,
                   "': ", peer.failure ? peer.failure->message : "not connected"));
      return;
    }
    if (!x->resend.empty()) {
      x->resend.pop_front();
      x->replied[seq] = FileXfer::kUnanswered;
    } else {
      ++x->next;
    }
    const FileChunk& c = chunks[seq];
    ++x->in_flight;
    auto ctx = std::make_unique<FileSendCtx>();
    ctx->header = encode(FileRequestHeader{x->op, x->id, seq, c.fd, c.offset, c.len});
    const uint64_t id = x->id;
    ++x->sending;
    ctx->done = [this, id, seq, x](ucs_status_t s) {
      --x->sending;
      if (s == UCS_OK) return;
      auto it = xfers_.find(id);
      if (it == xfers_.end()) return;
      auto keep = it->second;
      fail(*keep, ucx_error(ErrorCode::Remote,
                            "sending file chunk " + std::to_string(seq) + " to agent '" +
                                keep->c->peer->name + "'",
                            s));
    };
    const bool write = x->op == Op::Write;
    send_file_am(peer.ep, kFileRequestAmId, std::move(ctx), write ? c.local : nullptr,
                 write ? c.len : 0, true);
  }
}

void FileClient::fail_peer(const std::shared_ptr<UcxPeer>& peer) {
  for (auto it = xfers_.begin(); it != xfers_.end();) {
    auto x = (it++)->second;  // fail() erases it
    if (x->c->peer == peer) {
      fail(*x, err(ErrorCode::Remote, "transfer with agent '", peer->name,
                   "' failed: ", peer->failure->message));
    }
  }
}

void FileClient::resend_due() {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = resends_.begin(); it != resends_.end();) {
    auto found = xfers_.find(*it);
    if (found == xfers_.end() || found->second->resend.empty()) {
      it = resends_.erase(it);
      continue;
    }
    ++it;  // pump_file may fail the transfer, which erases it from xfers_ only
    if (now >= found->second->resend_at) pump(std::shared_ptr<FileXfer>(found->second));
  }
}

void FileClient::on_reply(std::string_view header, const char* body, size_t len, bool rndv) {
  auto h = decode_file_reply(header);
  if (!h) {
    log(LogLevel::Warn, "UCX: dropped a file reply: " + h.error().message);
    return;
  }
  auto it = xfers_.find(h->xfer);
  if (it == xfers_.end()) return;  // cancelled, or failed already
  auto x = it->second;
  const std::string& name = x->c->peer->name;
  if (h->seq >= x->next || x->replied[h->seq] != FileXfer::kUnanswered || rndv) {
    fail(*x, err(ErrorCode::Remote, "agent '", name, "' sent a file reply for chunk ", h->seq,
                 " that was not asked for"));
    return;
  }
  const FileChunk& c = (*x->chunks)[h->seq];
  if (h->busy) {
    if (len != 0 || h->error) {
      fail(*x, err(ErrorCode::Remote, "agent '", name, "' sent a malformed busy reply"));
      return;
    }
    x->replied[h->seq] = FileXfer::kToResend;
    x->resend.push_back(h->seq);
    --x->in_flight;
    x->window = 1;
    x->backoff = std::clamp(2 * x->backoff, kFileResendFirst, kFileResendMax);
    x->resend_at = std::chrono::steady_clock::now() + x->backoff;
    resends_.insert(x->id);
    ++backend_.events_;
    log(LogLevel::Debug, "UCX: agent '" + name + "' has no staging memory free; file chunk " +
                             std::to_string(h->seq) + " (fd " + std::to_string(c.fd) + " offset " +
                             std::to_string(c.offset) + ") is resent in " +
                             std::to_string(x->backoff.count()) + " us");
    return;
  }
  if (h->error) {
    fail(*x, err(*h->error, "agent '", name, "' file fd ", c.fd, " offset ", c.offset, " len ",
                 c.len, ": ", std::string_view(body, std::min(len, kMaxFileErrorBytes))));
    return;
  }
  const uint64_t want = x->op == Op::Read ? c.len : 0;
  if (len != want) {
    fail(*x, err(ErrorCode::Remote, "agent '", name, "' replied ", len, " bytes for file fd ", c.fd,
                 " offset ", c.offset, " len ", c.len));
    return;
  }
  if (x->op == Op::Read) std::memcpy(c.local, body, len);
  x->replied[h->seq] = FileXfer::kReplied;
  x->backoff = std::chrono::microseconds{0};
  x->window = std::min(x->window + 1, kFileWindow);
  --x->in_flight;
  ++x->done;
  ++backend_.events_;
  if (x->done == x->chunks->size()) {
    // Every byte is in place (READ: here; WRITE: in the owner's file): now the notification.
    xfers_.erase(x->id);
    backend_.data_complete(x->c, UCS_OK);
    return;
  }
  pump(x);
}

}  // namespace kvbm::xfer::detail::ucx
