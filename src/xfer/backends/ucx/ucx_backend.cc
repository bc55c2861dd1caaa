#include "xfer/backends/ucx/ucx_backend.h"

#include <chrono>
#include <cstdlib>
#include <thread>
#include <utility>

#include "kvbm/log.h"
#include "xfer/backend_params.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"

namespace kvbm::xfer::detail {
namespace ucx {
namespace {

// ucp_worker_progress() calls in one progress(), at most.
constexpr int kMaxProgressRounds = 64;

}  // namespace

Status UcxBackend::init() {
  KVBM_TRY(open_worker(UCP_FEATURE_RMA | UCP_FEATURE_AM, &context_, &worker_, &address_));
  KVBM_TRY(learn_shape());
  return set_handlers();
}

Status UcxBackend::set_handlers() {
  KVBM_TRY(set_am_handler(worker_, kNotifAmId, &UcxBackend::on_am, this));
  for (unsigned id : {kFileRequestAmId, kFileReplyAmId}) {
    KVBM_TRY(set_am_handler(worker_, id, &UcxBackend::on_file_am, this));
  }
  KVBM_TRY(set_am_handler(worker_, kFilePollAmId, &UcxBackend::on_file_poll, this));
  KVBM_TRY(set_am_handler(worker_, kAmRmaRequestAmId, &AmRma::on_request, &am_));
  KVBM_TRY(set_am_handler(worker_, kAmRmaReplyAmId, &AmRma::on_reply, &am_));
  return set_am_handler(worker_, kReceiveProbeAmId, &ReceiveProbe::on_probe, &probe_);
}

Status UcxBackend::learn_shape() {
  static char probe[64];
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = probe;
  mp.length = sizeof probe;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context_, &mp, &memh); s != UCS_OK) {
    return ucx_error(ErrorCode::RegistrationFailed, "ucp_mem_map of a probe", s);
  }
  void* packed = nullptr;
  size_t len = 0;
  ucs_status_t s = ucp_rkey_pack(context_, memh, &packed, &len);
  if (s == UCS_OK) {
    shape_ = learn_wire_shape(address_, {static_cast<const char*>(packed), len});
    ucp_rkey_buffer_release(packed);
  }
  ucp_mem_unmap(context_, memh);
  if (s != UCS_OK) return ucx_error(ErrorCode::RegistrationFailed, "ucp_rkey_pack of a probe", s);
  return {};
}

UcxBackend::~UcxBackend() {
  // Before the endpoints go: the thread never touches them, but its jobs name them.
  files_served_.stop_thread();
  std::lock_guard<std::mutex> lock(mu_);
  files_served_.clear();
  auto peers = peers_;
  for (auto& [name, peer] : peers)
    close_peer_locked(peer, err(ErrorCode::Cancelled, "backend shut down"));
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
  // Operations toward a peer that died where UCX cannot see it (shared memory) never call
  // back; with the worker gone none will, so their posts are freed here.
  std::vector<std::shared_ptr<PostState>> orphans;
  for (PostState* c : kept_) orphans.push_back(std::move(c->ops_keep));
  kept_.clear();
}

Status UcxBackend::connect(const std::string& agent, std::string_view connection_info) {
  const size_t tl = connection_info.find('\n');
  if (tl == std::string_view::npos) {
    return err(ErrorCode::InvalidArgument, "malformed UCX connection data for agent '", agent, "'");
  }
  KVBM_TRY(check_transport_line(agent, connection_info.substr(0, tl)));
  connection_info.remove_prefix(tl + 1);
  const size_t nl = connection_info.find('\n');
  if (nl == std::string_view::npos || nl > 128 || nl + 1 == connection_info.size()) {
    return err(ErrorCode::InvalidArgument, "malformed UCX connection data for agent '", agent, "'");
  }
  auto address = check_worker_address(agent, connection_info.substr(nl + 1), shape_);
  if (!address) return address.error();
  // The first line: the peer's boot id, then (if it offers one) its same-host line.
  const std::string_view first = connection_info.substr(0, nl);
  const size_t sp = first.find(' ');
  const bool same_host = first.substr(0, sp) == host_;
  // Shared memory is the fast path on one host, but UCX 1.13's shared-memory transports
  // cannot report a failed peer, so they are only selectable without peer error handling
  // (asked for anyway, UCX crashes). Whether UCX will pick them is the address's to say,
  // not the boot-id line's. Elsewhere (another host, or UCX_TLS without shared memory)
  // UCX watches the peer.
  const bool reaches_shm = shape_.address_walks ? address->same_machine : same_host;
  const bool shm = reaches_shm && tls_allows_shared_memory();
  const bool peer_errors = !shm;
  const bool self = agent == env_.agent_name && same_host_ != SameHostMode::Off;
  std::shared_ptr<SameHostPeer> host;
  if (shm && same_host && !self && same_host_ != SameHostMode::Off &&
      sp != std::string_view::npos) {
    std::string why;
    host = SameHostPeer::reach(first.substr(sp + 1), &why);
    if (!host) {
      log(LogLevel::Info, "UCX: agent '" + agent + "' is on this host, but " + why +
                              ": its memory is reached through UCX");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_ == nullptr) {
    return err(ErrorCode::Internal, "UCX has no worker (replacing it failed; see the log)");
  }
  auto peer = std::make_shared<UcxPeer>();
  peer->name = agent;
  peer->address = connection_info.substr(nl + 1);
  peer->shm = shm;
  peer->connection = connection_seed_++;
  peer->self = self;
  peer->host = std::move(host);
  // This worker itself (self transport) has real RMA; others per am_rma.h's rule.
  peer->am_rma =
      rma_ == RmaMode::Am || (rma_ == RmaMode::Auto && agent != env_.agent_name &&
                              !native_rma_reaches(connection_info.substr(nl + 1), shape_));
  if (ucs_status_t s = open_endpoint(worker_, connection_info.substr(nl + 1), peer_errors,
                                     &FailedEndpoints::on_error, &failed_eps_, &peer->ep);
      s != UCS_OK) {
    return ucx_error(ErrorCode::Remote, "ucp_ep_create to agent '" + agent + "'", s);
  }
  if (auto it = peers_.find(agent); it != peers_.end()) {
    close_peer_locked(it->second,
                      err(ErrorCode::Remote, "connection to agent '", agent, "' was replaced"));
  }
  peers_[agent] = std::move(peer);
  return {};
}

void UcxBackend::close_peer_locked(const std::shared_ptr<UcxPeer>& peer, Error why) {
  if (!peer->failure) peer->failure = std::move(why);
  peer->failed.store(true, std::memory_order_release);
  files_.fail_peer(peer);
  am_.fail_peer(*peer);
  for (UcxRemoteRegion* r : peer->regions) {
    if (r->rkey != nullptr) ucp_rkey_destroy(r->rkey);
    r->rkey = nullptr;
  }
  if (peer->ep != nullptr) {
    // Requests that came in on this endpoint get no reply: it is about to go.
    files_served_.forget_endpoint(peer->ep);
    close_endpoint(worker_, peer->ep);
    peer->ep = nullptr;
  }
  auto it = peers_.find(peer->name);
  if (it != peers_.end() && it->second == peer) peers_.erase(it);
}

void UcxBackend::disconnect(const std::string& agent) {
  std::lock_guard<std::mutex> lock(mu_);
  disconnect_locked(agent);
}

void UcxBackend::disconnect_locked(const std::string& agent) {
  auto it = peers_.find(agent);
  if (it == peers_.end()) return;
  auto peer = it->second;
  close_peer_locked(peer, err(ErrorCode::Remote, "agent '", agent, "' was disconnected"));
  inbox_.forget(agent);
}

void UcxBackend::peer_failed(const std::string& agent) {
  bool replaced = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(agent);
    const bool shm = it != peers_.end() && it->second->shm && !it->second->self;
    disconnect_locked(agent);
    replaced = shm && recover_receive_queue(agent);
  }
  if (replaced) connection_changed();
}

void UcxBackend::connection_changed() {
  if (env_.on_connection_changed) env_.on_connection_changed();
}

bool UcxBackend::recover_receive_queue(const std::string& failed_agent) {
  if (worker_ == nullptr || !receive_blocked()) return false;
  log(LogLevel::Warn, "UCX: agent '" + failed_agent +
                          "' failed, and this worker's shared-memory receive queue is blocked "
                          "(a peer died while writing into it): the worker is replaced");
  if (auto st = replace_worker(); !st) {
    log(LogLevel::Error, "UCX: replacing the worker failed: " + st.error().message);
  }
  return true;
}

bool UcxBackend::receive_blocked() {
  // A test hook: the state a peer killed mid-write leaves, which no test can time.
  if (const char* v = std::getenv("KVBM_UCX_TEST_RECEIVE_BLOCKED"); v != nullptr && *v == '1') {
    return true;
  }
  // Generous: a live queue answers in microseconds, but this machine may be busy.
  return probe_.blocked(context_, worker_, address_, std::chrono::milliseconds(500));
}

Status UcxBackend::replace_worker() {
  retire_worker();
  const std::string old_address = std::exchange(address_, std::string());
  Status made = create_worker(context_, &worker_, &address_);
  if (made) made = set_handlers();
  if (!made) {
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    worker_ = nullptr;
    auto peers = peers_;
    for (auto& [name, peer] : peers) close_peer_locked(peer, made.error());
    return made;
  }
  reconnect_peers(old_address);
  return {};
}

// Everything tied to the worker's endpoints ends, then the worker goes: what it would
// have called back ends here, as a reset connection.
void UcxBackend::retire_worker() {
  for (auto& [name, peer] : peers_) {
    files_.fail_peer(peer);
    am_.fail_peer(*peer);
    for (UcxRemoteRegion* r : peer->regions) {
      if (r->rkey != nullptr) ucp_rkey_destroy(r->rkey);
      r->rkey = nullptr;
    }
    if (peer->ep != nullptr) close_endpoint(worker_, peer->ep);
    peer->ep = nullptr;
  }
  files_served_.clear();  // replies owed through the old worker's endpoints
  failed_eps_.clear();
  ucp_worker_destroy(worker_);
  worker_ = nullptr;
  am_.worker_gone();
  end_kept_posts(UCS_ERR_CONNECTION_RESET);
}

// The peers connected again from the new worker, as new connections (their notifications
// count afresh), their keys unpacked again; one that cannot be is closed.
void UcxBackend::reconnect_peers(const std::string& old_address) {
  auto peers = peers_;
  for (auto& [name, peer] : peers) {
    if (peer->address == old_address) peer->address = address_;  // this agent itself
    peer->connection = connection_seed_++;
    peer->next_seq = 0;
    ucs_status_t s = open_endpoint(worker_, peer->address, !peer->shm, &FailedEndpoints::on_error,
                                   &failed_eps_, &peer->ep);
    if (s != UCS_OK) peer->ep = nullptr;
    for (UcxRemoteRegion* r : peer->regions) {
      if (s != UCS_OK || r->file) continue;
      s = ucp_ep_rkey_unpack(peer->ep, r->packed.data(), &r->rkey);
      if (s != UCS_OK) r->rkey = nullptr;
    }
    if (s != UCS_OK) {
      close_peer_locked(peer, ucx_error(ErrorCode::Remote,
                                        "connecting agent '" + name + "' from a new worker", s));
    }
  }
}

void UcxBackend::end_kept_posts(ucs_status_t status) {
  const std::vector<PostState*> kept(kept_.begin(), kept_.end());
  for (PostState* c : kept) {
    c->ops_pending = 1;  // what is left of them ends now, at once
    op_done(c, status);
  }
}

// Agent::connect: an endpoint flush completes once UCX has wired the endpoint up.
Status UcxBackend::establish(const std::string& agent, std::chrono::milliseconds timeout) {
  void* req = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(agent);
    if (it == peers_.end() || it->second->ep == nullptr)
      return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
    ucp_request_param_t param{};
    req = ucp_ep_flush_nbx(it->second->ep, &param);
  }
  if (UCS_PTR_IS_ERR(req))
    return ucx_error(ErrorCode::Remote, "ucp_ep_flush_nbx", UCS_PTR_STATUS(req));
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    progress(LockWait::Wait);
    std::lock_guard<std::mutex> lock(mu_);
    const ucs_status_t s = req == nullptr ? UCS_OK : ucp_request_check_status(req);
    if (s != UCS_INPROGRESS || std::chrono::steady_clock::now() >= until) {
      if (req != nullptr) ucp_request_free(req);  // released by UCX once it completes
      if (s == UCS_OK) return {};
      if (s != UCS_INPROGRESS) return ucx_error(ErrorCode::Remote, "endpoint wireup", s);
      return err(ErrorCode::Timeout, "no answer within ", timeout.count(), " ms");
    }
    std::this_thread::yield();
  }
}

size_t UcxBackend::progress(LockWait wait) {
  // The progress thread never waits for the lock (as in the CUDA backend): a caller
  // holding it is posting, and a thread queued behind it turns each unlock into a futex
  // wake-up. Agent::progress waits: taking the lock is what orders the bytes this
  // worker copied in (UCX's emulated PUT) before the caller's reads.
  auto lock = progress_lock(mu_, wait);
  if (!lock.owns_lock() || worker_ == nullptr) return 0;
  events_ = 0;
  // Bounded: under a steady stream of arriving messages (peers resending file chunks the
  // owner was too busy for, say) an unbounded drain never returned, and the replies
  // below, which free the owner's staging buffers, never went out.
  for (int i = 0; i < kMaxProgressRounds && ucp_worker_progress(worker_) != 0; ++i) {
  }
  events_ += files_served_.reply_jobs();
  if (files_served_.has_waiting()) events_ += files_served_.start_jobs();
  if (files_.has_resends()) files_.resend_due();
  if (files_.has_outstanding()) files_.poll_due();
  if (!failed_eps_.empty()) {
    failed_eps_.close_failed(peers_, [this](const std::shared_ptr<UcxPeer>& peer, Error why) {
      close_peer_locked(peer, std::move(why));
    });
    ++events_;
  }
  return events_;
}

ucs_status_t UcxBackend::on_file_am(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxBackend*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  std::string_view h(static_cast<const char*>(header), header_length);
  const char* body = rndv ? nullptr : static_cast<const char*>(data);
  if (rndv) length = 0;
  // Requests carry a reply endpoint; replies never do.
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0) {
    self->files_served_.on_request(h, body, length, rndv, param->reply_ep);
  } else {
    self->files_.on_reply(h, body, length, rndv);
  }
  return UCS_OK;
}

ucs_status_t UcxBackend::on_file_poll(void* arg, const void* header, size_t header_length,
                                      void* /*data*/, size_t /*length*/,
                                      const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxBackend*>(arg);
  const bool has_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0;
  self->files_served_.on_poll({static_cast<const char*>(header), header_length},
                              has_ep ? param->reply_ep : nullptr);
  ++self->events_;
  return UCS_OK;  // a poll has no body: any that came by rendezvous is dropped
}

}  // namespace ucx

Result<std::unique_ptr<Backend>> make_ucx_backend(const BackendEnv& env,
                                                  const BackendParams& params) {
  // UCX itself is configured through UCX_* environment variables; the parameters are
  // ours: same_host (same_host.h), defaulting to KVBM_UCX_SAME_HOST, else auto;
  // file_staging_mib, the staging memory for serving this agent's files to peers,
  // defaulting to KVBM_UCX_FILE_STAGING_MIB, else 64; and copy_threads, the helper threads
  // of the same-host path's large copies (copy/parallel_copy.h), defaulting to
  // KVBM_UCX_COPY_THREADS, else a quarter of the cores, at most 3; and rma (am_rma.h),
  // defaulting to KVBM_UCX_RMA, else auto.
  if (auto st =
          check_param_keys("UCX", params, {"same_host", "file_staging_mib", "copy_threads", "rma"});
      !st) {
    return err(ErrorCode::InvalidArgument, st.error().message,
               "; UCX itself reads UCX_* environment variables");
  }
  BackendParams p = params;
  for (const auto& [key, var] :
       {std::pair{"same_host", "KVBM_UCX_SAME_HOST"},
        std::pair{"file_staging_mib", "KVBM_UCX_FILE_STAGING_MIB"},
        std::pair{"copy_threads", "KVBM_UCX_COPY_THREADS"}, std::pair{"rma", "KVBM_UCX_RMA"}}) {
    const char* env_value = std::getenv(var);
    if (env_value != nullptr && *env_value != '\0') p.emplace(key, env_value);  // params win
  }
  auto mode = parse_same_host_mode(p.count("same_host") != 0 ? p.at("same_host") : "auto");
  if (!mode) return mode.error();
  auto rma = ucx::parse_rma_mode(p.count("rma") != 0 ? p.at("rma") : "auto");
  if (!rma) return rma.error();
  static_assert(kFileChunkBytes == 1 << 20, "file_staging_mib counts staging buffers");
  auto staging =
      number_param("UCX", p, "file_staging_mib", ucx::FileService::kDefaultMaxStaging, 1, 1 << 16);
  if (!staging) return staging.error();
  auto copy_threads = number_param("UCX", p, "copy_threads",
                                   kvbm::detail::ParallelCopier::default_threads(), 0, 64);
  if (!copy_threads) return copy_threads.error();
  auto backend = std::make_unique<ucx::UcxBackend>(env, *mode, *rma, *staging, *copy_threads);
  KVBM_TRY(backend->init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvbm::xfer::detail
