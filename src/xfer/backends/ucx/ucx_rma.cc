// The UCX backend's READ and WRITE requests: gets and puts and an endpoint flush, each
// calling back (ucx_backend_impl.h: PostState); on one host, copies through mappings
// and CMA in the caller's thread; with a peer's FILE, the chunks of file_client.h.
#include <chrono>
#include <cstring>

#include "kvbm/log.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"

namespace kvbm::xfer::detail::ucx {
namespace {

std::string in_flight(const std::string& peer) {
  return "a request with agent '" + peer + "' destroyed in flight";
}

}  // namespace

Result<std::unique_ptr<BackendRequest>> UcxBackend::prepare(
    Op op, const std::string& agent, std::vector<Segment> segments,
    std::optional<std::string> notification) {
  if (notification && notification->size() > kMaxNotifBytes) {
    return err(ErrorCode::InvalidArgument, "notification of ", notification->size(),
               " bytes exceeds ", kMaxNotifBytes);
  }
  std::shared_ptr<UcxPeer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(agent);
    if (it == peers_.end())
      return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
    peer = it->second;
  }
  std::vector<UcxRequest::Item> items;
  std::vector<FileChunk> chunks;  // for a peer's FILE: the request in chunks of bounded size
  items.reserve(segments.size());
  for (const Segment& s : segments) {
    auto* local = static_cast<UcxLocalRegion*>(s.local_region);
    auto* remote = static_cast<UcxRemoteRegion*>(s.remote_region);
    if (remote->peer != peer) {
      return err(ErrorCode::Remote, "remote key of agent '", agent,
                 "' belongs to an older connection");
    }
    if (remote->file) {
      for (uint64_t off = 0; off < s.local.len; off += kFileChunkBytes) {
        chunks.push_back({reinterpret_cast<char*>(s.local.addr + off), s.remote.dev_id,
                          s.remote.addr + off, std::min(kFileChunkBytes, s.local.len - off)});
      }
      continue;
    }
    char* direct = nullptr;
    if (peer->self) {
      direct = reinterpret_cast<char*>(s.remote.addr);
    } else if (remote->mapping) {
      direct = remote->mapping->at(s.remote.addr - remote->base);
    }
    items.push_back({reinterpret_cast<void*>(s.local.addr), s.remote.addr, s.local.len, local->memh,
                     remote, direct});
  }
  if (!items.empty() && !chunks.empty()) {
    return err(ErrorCode::InvalidArgument, "UCX request mixes DRAM and FILE remote regions");
  }
  std::shared_ptr<const std::vector<FileChunk>> file_chunks;
  if (!chunks.empty())
    file_chunks = std::make_shared<const std::vector<FileChunk>>(std::move(chunks));
  return std::unique_ptr<BackendRequest>(
      std::make_unique<UcxRequest>(this, op, std::move(peer), std::move(items),
                                   std::move(notification), std::move(file_chunks)));
}

void UcxBackend::fail(PostState* c, Error e) {
  c->error = std::move(e);
  c->state.store(XferState::Error, std::memory_order_release);
  ++events_;
}

UcxRequest::~UcxRequest() {
  if (!current_) return;
  // No byte may move after this returns (the caller may free the memory next): a get
  // still writes the local buffer, a put or a file WRITE's chunk still reads it.
  if (file_chunks_) {
    // A READ's replies are copied only while the transfer is listed (erased below); a
    // WRITE's sends are waited for even once it failed and left the list.
    auto x = file_x_;
    if (x && op_ == Op::Write) {
      backend_->wait_quiet(in_flight(peer_->name), [&] { return x->sending == 0; });
    }
  } else if (!same_host_) {  // the same-host path moved the bytes in post()
    auto c = current_;
    backend_->wait_quiet(in_flight(peer_->name), [&] {
      return c->state.load(std::memory_order_acquire) != XferState::InProgress;
    });
  }
  std::lock_guard<std::mutex> lock(backend_->mu_);
  // Operations over active messages still waiting for their replies (the peer timeout
  // passed) stop waiting: a late reply then finds no operation and writes nothing.
  if (peer_->am_rma && current_->ops_pending != 0) backend_->am_.forget(current_.get());
  // Callbacks still hold the completion; they see the flag and send no notification.
  current_->cancelled = true;
  // Replies that still arrive find no transfer and touch no local memory.
  if (file_xfer_ != 0) backend_->files_.forget(file_xfer_);
}

// Same host: the bytes move here, in the caller's thread and without the backend lock
// (so other requests go on), by memmove through mappings and by CMA; the notification
// then goes over UCX, after the data, as on every other path.
Status UcxRequest::post_same_host() {
  // The common case, a repost with no notification to a healthy peer: no lock and no
  // allocation, as these cost more than a small copy. The last completion is reused when
  // no callback holds it; without a notification none ever does.
  if (!notification_ && current_ && current_.use_count() == 1 &&
      current_->state.load(std::memory_order_relaxed) == XferState::Done &&
      !peer_->failed.load(std::memory_order_acquire) && !(peer_->host && peer_->host->exited())) {
    current_->state.store(XferState::InProgress, std::memory_order_relaxed);
    if (Status st = copy_same_host(); !st) {
      std::lock_guard<std::mutex> lock(backend_->mu_);
      backend_->fail(current_.get(), err(ErrorCode::Remote, "transfer with agent '", peer_->name,
                                         "' failed: ", st.error().message));
      return current_->error;
    }
    current_->state.store(XferState::Done, std::memory_order_release);
    return {};
  }
  std::shared_ptr<PostState> c;
  bool replaced = false;  // the peer's death made the backend replace its worker
  {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    if (current_ && current_->state.load() == XferState::InProgress) {
      return err(ErrorCode::InvalidArgument, "UCX request is already in progress");
    }
    if (peer_->failure)
      return err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message);
    c = std::make_shared<PostState>();
    c->backend = backend_;
    c->peer = peer_;
    c->notification = &notification_;
    current_ = c;
    if (peer_->host && peer_->host->exited()) {
      backend_->close_peer_locked(peer_, err(ErrorCode::Remote, "agent '", peer_->name, "' (pid ",
                                             peer_->host->pid(), ") has exited"));
      backend_->fail(c.get(), err(ErrorCode::Remote, "transfer with agent '", peer_->name,
                                  "' failed: ", peer_->failure->message));
      // It may have died writing into our receive queue (its messages come that way).
      replaced = backend_->recover_receive_queue(peer_->name);
    }
  }
  if (c->state.load() == XferState::Error) {
    if (replaced) backend_->connection_changed();
    return c->error;
  }
  // The bytes are in place before the notification's message is: CMA's copies are done
  // when the call returns, and UCX fences its shared-memory queue's stores before it
  // publishes a message, so the peer sees our stores first.
  Status st = copy_same_host();
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (!st) {
    backend_->fail(c.get(), err(ErrorCode::Remote, "transfer with agent '", peer_->name,
                                "' failed: ", st.error().message));
    return c->error;
  }
  backend_->data_complete(c, UCS_OK);
  return {};
}

Status UcxRequest::copy_same_host() {
  backend_->copier_.copy(direct_);
  if (cma_local_.empty()) return {};
  return peer_->host->copy(op_, cma_local_, cma_remote_);
}

Status UcxRequest::post() {
  if (same_host_) return post_same_host();
  std::lock_guard<std::mutex> lock(backend_->mu_);
  if (current_ && current_->state.load() == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "UCX request is already in progress");
  }
  if (peer_->failure)
    return err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message);
  auto c = std::make_shared<PostState>();
  c->backend = backend_;
  c->peer = peer_;
  c->notification = &notification_;
  current_ = c;
  if (file_chunks_) {
    if (file_xfer_ != 0) backend_->files_.forget(file_xfer_);
    auto x = std::make_shared<FileXfer>();
    x->id = file_xfer_ = backend_->files_.next_id();
    file_x_ = x;
    x->op = op_;
    x->c = c;
    x->chunks = file_chunks_;
    backend_->files_.start(x);
    return {};
  }
  // Every get and put reports its own completion, and the flush (a WRITE's proof that the
  // bytes are at the target) one more: the request is done when all have called back,
  // and failed if any of them failed.
  c->ops_pending = 1;  // post()'s own, dropped below
  c->ops_keep = c;
  backend_->kept_.insert(c.get());
  if (peer_->am_rma) {
    // Each operation's reply proves its bytes landed (or were read): no flush.
    backend_->am_.post(op_, *peer_, c.get(), am_spans_);
    backend_->op_done(c.get(), UCS_OK);
    if (c->state.load() == XferState::Error) return c->error;
    return {};
  }
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_MEMH | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &UcxBackend::on_op_done;
  p.user_data = c.get();
  for (const Item& it : items_) {
    if (it.remote_region->rkey == nullptr) {
      c->ops_status = UCS_ERR_NOT_CONNECTED;
      break;
    }
    p.memh = it.memh;
    ucs_status_ptr_t r =
        op_ == Op::Write
            ? ucp_put_nbx(peer_->ep, it.local, it.len, it.remote, it.remote_region->rkey, &p)
            : ucp_get_nbx(peer_->ep, it.local, it.len, it.remote, it.remote_region->rkey, &p);
    if (UCS_PTR_IS_ERR(r)) {
      c->ops_status = UCS_PTR_STATUS(r);
      break;
    }
    if (r != nullptr) ++c->ops_pending;  // its callback frees it
  }
  if (c->ops_status == UCS_OK) {
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    ucs_status_ptr_t r = ucp_ep_flush_nbx(peer_->ep, &p);
    if (UCS_PTR_IS_PTR(r)) {
      ++c->ops_pending;
    } else if (UCS_PTR_IS_ERR(r)) {
      c->ops_status = UCS_PTR_STATUS(r);
    }
  }
  backend_->op_done(c.get(), UCS_OK);
  if (c->state.load() == XferState::Error) return c->error;
  return {};
}

void UcxBackend::on_op_done(void* request, ucs_status_t status, void* user) {
  auto* c = static_cast<PostState*>(user);
  c->backend->op_done(c, status);
  // Freed here, not after posting: a request freed early never calls back.
  ucp_request_free(request);
}

void UcxBackend::op_done(PostState* c, ucs_status_t status) {
  if (status != UCS_OK && c->ops_status == UCS_OK) c->ops_status = status;
  c->parts_done.fetch_add(1, std::memory_order_relaxed);
  if (--c->ops_pending != 0) return;
  auto keep = std::move(c->ops_keep);
  kept_.erase(c);
  status = c->ops_status;
  // The endpoint's failure may be noted in the same progress call as a flush that still
  // reported success: that flush proves nothing.
  if (status == UCS_OK) {
    status = failed_eps_.status_of(c->peer->ep);
  }
  data_complete(keep, status);
}

void UcxBackend::wait_quiet(const std::string& what, const std::function<bool()>& quiet) {
  const auto until = std::chrono::steady_clock::now() + env_.peer_timeout;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (quiet()) return;
    }
    if (std::chrono::steady_clock::now() >= until) {
      log(LogLevel::Warn,
          "UCX: " + what + " did not end within the peer timeout; its bytes may still move");
      return;
    }
    progress(LockWait::Wait);
  }
}

}  // namespace kvbm::xfer::detail::ucx
