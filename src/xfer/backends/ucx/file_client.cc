#include "xfer/backends/ucx/file_client.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kvbm/log.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"
#include "xfer/ucx_common/staging_am.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::ucx {

void FileClient::fail(FileXfer& x, Error e) {
  if (x.c->state.load() == XferState::InProgress) backend_.fail(x.c.get(), std::move(e));
  xfers_.erase(x.id);
}

void FileClient::start(const std::shared_ptr<FileXfer>& x) {
  x->w = staging::Window(x->chunks->size(), kFileWindow);
  xfers_[x->id] = x;
  pump(x);
}

void FileClient::pump(const std::shared_ptr<FileXfer>& x) {
  UcxPeer& peer = *x->c->peer;
  while (x->c->state.load() == XferState::InProgress && x->w.ready()) {
    if (peer.failure || peer.ep == nullptr) {
      fail(*x, err(ErrorCode::Remote, "agent '", peer.name,
                   "': ", peer.failure ? peer.failure->message : "not connected"));
      return;
    }
    const uint64_t seq = x->w.take();
    const FileChunk& c = (*x->chunks)[seq];
    auto m = staging::request(
        {x->op, MemType::File, x->id, seq, c.fd, c.offset, c.len, peer.connection});
    const uint64_t id = x->id;
    ++x->sending;
    m.done = [this, id, seq, x](ucs_status_t s) {
      --x->sending;
      if (s == UCS_OK) return;
      outstanding_.answered(id);  // never asked: no answer to poll for
      auto it = xfers_.find(id);
      if (it == xfers_.end()) return;
      auto keep = it->second;
      fail(*keep, ucx_error(ErrorCode::Remote,
                            "sending file chunk " + std::to_string(seq) + " to agent '" +
                                keep->c->peer->name + "'",
                            s));
    };
    // Eager: each chunk arrives whole in the owner's callback (file_service.h).
    const bool write = x->op == Op::Write;
    outstanding_.sent(id, x->c->peer);
    staging::send(peer.ep, kFileRequestAmId, std::move(m), write ? c.local : nullptr,
                  write ? c.len : 0, UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY);
  }
}

void FileClient::fail_peer(const std::shared_ptr<UcxPeer>& peer) {
  outstanding_.drop_peer(peer.get());
  for (auto it = xfers_.begin(); it != xfers_.end();) {
    auto x = (it++)->second;  // fail() erases it
    if (x->c->peer == peer) {
      fail(*x, err(ErrorCode::Remote, "transfer with agent '", peer->name,
                   "' failed: ", peer->failure->message));
    }
  }
}

void FileClient::resend_due() {
  for (auto it = resends_.begin(); it != resends_.end();) {
    auto found = xfers_.find(*it);
    if (found == xfers_.end() || !found->second->w.has_resends()) {
      it = resends_.erase(it);
      continue;
    }
    ++it;  // pump may fail the transfer, which erases it from xfers_ only
    pump(std::shared_ptr<FileXfer>(found->second));
  }
}

void FileClient::poll_due() {
  const auto now = staging::Polls::Clock::now();
  outstanding_.for_each_peer([&](const std::shared_ptr<UcxPeer>& peer) {
    if (peer->failure || peer->ep == nullptr) return;
    if (polls_.take(peer->connection, now))
      staging::send_poll(polls_, peer->ep, peer->connection, kFilePollAmId);
  });
}

void FileClient::on_reply(std::string_view header, const char* body, size_t len, bool rndv) {
  auto h = staging::decode_chunk_reply(header);
  if (!h) {
    log(LogLevel::Warn, "UCX: dropped a file reply: " + h.error().message);
    return;
  }
  if (h->poll_end) {
    if (len != 0 || rndv) log(LogLevel::Warn, "UCX: a file poll's end came with a body");
    polls_.answered(h->xfer, h->seq, staging::Polls::Clock::now());
    if (outstanding_.empty()) polls_.prune();
    ++backend_.events_;
    return;
  }
  outstanding_.answered(h->xfer);
  auto it = xfers_.find(h->xfer);
  if (it == xfers_.end()) return;  // cancelled, or failed already
  auto x = it->second;
  const std::string& name = x->c->peer->name;
  if (!x->w.awaited(h->seq) || rndv) {
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
    const auto wait = x->w.busy(h->seq, std::chrono::steady_clock::now());
    resends_.insert(x->id);
    ++backend_.events_;
    log(LogLevel::Debug, "UCX: agent '" + name + "' has no staging memory free; file chunk " +
                             std::to_string(h->seq) + " (fd " + std::to_string(c.fd) + " offset " +
                             std::to_string(c.offset) + ") is resent in " +
                             std::to_string(wait.count()) + " us");
    return;
  }
  if (h->error) {
    fail(*x, err(*h->error, "agent '", name, "' file fd ", c.fd, " offset ", c.offset, " len ",
                 c.len, ": ", std::string_view(body, std::min(len, staging::kMaxErrorBytes))));
    return;
  }
  const uint64_t want = x->op == Op::Read ? c.len : 0;
  if (len != want) {
    fail(*x, err(ErrorCode::Remote, "agent '", name, "' replied ", len, " bytes for file fd ", c.fd,
                 " offset ", c.offset, " len ", c.len));
    return;
  }
  if (x->op == Op::Read) std::memcpy(c.local, body, len);
  x->w.answer(h->seq);
  x->w.finish(h->seq);
  x->c->parts_done.fetch_add(1, std::memory_order_relaxed);
  ++backend_.events_;
  if (x->w.complete()) {
    // Every byte is in place (READ: here; WRITE: in the owner's file): now the notification.
    xfers_.erase(x->id);
    backend_.data_complete(x->c, UCS_OK);
    return;
  }
  pump(x);
}

}  // namespace kvbm::xfer::detail::ucx
