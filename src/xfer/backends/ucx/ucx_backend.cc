#include "xfer/backends/ucx/ucx_backend.h"

#include <sys/uio.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "common/hex.h"
#include "kvbm/log.h"
#include "storage/shared_memory.h"
#include "xfer/backend_params.h"
#include "xfer/backends/ucx/file_server.h"
#include "xfer/backends/ucx/file_serving_thread.h"
#include "xfer/backends/ucx/file_wire.h"
#include "xfer/backends/ucx/parallel_copy.h"
#include "xfer/backends/ucx/peer_check.h"
#include "xfer/backends/ucx/same_host.h"
#include "xfer/backends/ucx/ucx_worker.h"

namespace kvbm::xfer::detail {
namespace {

constexpr unsigned kNotifAmId = 7;
constexpr uint32_t kNotifMagic = 0x4b564e31;  // "KVN1"
constexpr size_t kMaxNotifBytes = 1 << 20;
constexpr size_t kMaxReorder = 4096;
// ucp_worker_progress() calls in one progress(), at most.
constexpr int kMaxProgressRounds = 64;
// A file chunk the owner was too busy for is resent after this wait, doubled on each
// "busy" in a row (a staging buffer frees within one chunk's disk I/O, but each resend
// carries the chunk's bytes again), and the transfer keeps one chunk in flight until the
// owner takes one again.
constexpr std::chrono::microseconds kFileResendFirst{100};
constexpr std::chrono::microseconds kFileResendMax{20000};

// Precedes the sender's name in every notification's active-message header.
struct NotifHeader {
  uint32_t magic;
  uint32_t name_len;
  uint64_t connection;  // the sender's connection id: sequence numbers restart per connection
  uint64_t seq;
};

// This machine's identity (its boot id), published with the worker address so that a
// peer knows whether shared memory can reach us.
std::string host_identity() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id.empty() ? "unknown-host" : id;
}

// Whether UCX_TLS leaves UCX any shared-memory transport.
bool tls_allows_shared_memory() {
  const char* env = std::getenv("UCX_TLS");
  if (env == nullptr || *env == '\0' || *env == '^') return true;
  std::istringstream in(env);
  for (std::string t; std::getline(in, t, ',');) {
    for (const char* shm : {"all", "sm", "shm", "posix", "sysv", "cma", "knem", "xpmem", "mm"}) {
      if (t == shm) return true;
    }
  }
  return false;
}

Error ucx_error(ErrorCode code, std::string_view what, ucs_status_t s) {
  return err(code, what, ": ", ucs_status_string(s));
}

class UcxBackend;

struct UcxPeer;

class UcxRemoteRegion final : public RemoteRegion {
 public:
  UcxRemoteRegion(UcxBackend* backend, std::shared_ptr<UcxPeer> peer, ucp_rkey_h rkey,
                  bool file = false)
      : backend(backend), peer(std::move(peer)), rkey(rkey), file(file) {}
  ~UcxRemoteRegion() override;

  UcxBackend* backend;
  std::shared_ptr<UcxPeer> peer;
  ucp_rkey_h rkey;    // null once the peer's connection is closed, and for files
  const bool file;    // a FILE region the peer serves through active messages
  uint64_t base = 0;  // the region's address at the peer
  std::shared_ptr<SharedMapping> mapping;  // same host: the region mapped here, or null
};

struct UcxPeer {
  std::string name;
  ucp_ep_h ep = nullptr;
  std::optional<Error> failure;     // set when the connection failed or was closed
  std::atomic<bool> failed{false};  // failure is set (read without the backend lock)
  std::set<UcxRemoteRegion*> regions;
  uint64_t connection = 0;
  uint64_t next_seq = 0;
  bool self = false;                   // this agent: its regions are our own addresses
  std::shared_ptr<SameHostPeer> host;  // a verified process on this host, or null
};

class UcxLocalRegion final : public LocalRegion {
 public:
  UcxLocalRegion(UcxBackend* backend, ucp_mem_h memh, std::string rkey, Desc file = {},
                 int shared_fd = -1)
      : backend(backend), memh(memh), rkey(std::move(rkey)), file(file), shared_fd(shared_fd) {}
  ~UcxLocalRegion() override;
  std::string remote_info() const override { return rkey; }

  UcxBackend* backend;
  ucp_mem_h memh;  // null for a FILE region (served to peers, not mapped)
  std::string rkey;
  Desc file;
  int shared_fd;  // the memory file holding the region (published to same-host peers), or -1
};

// A FILE region's remote_info: it only says that this agent serves the file over UCX.
constexpr std::string_view kFileRegionInfo = "ucx-file-1";

// State one post() shares with UCX callbacks; outlives the request if it is cancelled.
struct Completion {
  UcxBackend* backend = nullptr;
  std::shared_ptr<UcxPeer> peer;
  const std::optional<std::string>* notification = nullptr;  // the request's, or `owned`
  std::optional<std::string> owned;  // a notification sent without data (gen_notif)
  std::string notif_buffer;          // header + name, alive until the send completes
  std::atomic<XferState> state{XferState::InProgress};
  Error error{ErrorCode::Internal, ""};
  bool cancelled = false;  // guarded by the backend lock
  // A posted request's gets, puts and flush still to call back, plus one while post()
  // issues them; the first failure among them; and the completion itself, kept alive
  // for their callbacks (which carry a plain pointer) until the last one. Guarded by the
  // backend lock. Each operation's own status counts: a flush that reports success after
  // the peer failed is no proof that every get landed.
  size_t ops_pending = 0;
  ucs_status_t ops_status = UCS_OK;
  std::shared_ptr<Completion> ops_keep;
};

// One chunk of a transfer with a peer's file: local bytes <-> (fd, offset) at the owner.
struct FileChunk {
  char* local;
  uint64_t fd;
  uint64_t offset;
  uint64_t len;
};

// The initiator's state of one posted file transfer, keyed by id in the backend.
struct FileXfer {
  enum ChunkState : uint8_t { kUnanswered, kReplied, kToResend };
  uint64_t id = 0;
  Op op = Op::Read;
  std::shared_ptr<Completion> c;
  std::shared_ptr<const std::vector<FileChunk>> chunks;
  std::vector<uint8_t> replied;  // ChunkState, per chunk
  size_t next = 0, in_flight = 0, done = 0;
  size_t window = kFileWindow;  // chunks in flight at most: 1 after a "busy", then regrown
  // Chunks the owner answered "busy", sent again (before any new one) from resend_at.
  std::deque<uint64_t> resend;
  std::chrono::steady_clock::time_point resend_at;
  std::chrono::microseconds backoff{0};
  // Chunk requests UCX has not finished sending (a WRITE's read the local bytes).
  size_t sending = 0;
};

// Receive-side ordering of one sender's notifications.
struct Inbox {
  uint64_t connection = 0;
  uint64_t next_seq = 0;
  std::map<uint64_t, std::string> pending;
};

class UcxRequest;

class UcxBackend final : public Backend {
 public:
  // file_staging: the staging buffers (kFileChunkBytes each) this agent uses at once to
  // serve its files to peers; copy_threads: the same-host path's helper threads
  // (parallel_copy.h).
  UcxBackend(BackendEnv env, SameHostMode same_host, size_t file_staging, size_t copy_threads)
      : env_(std::move(env)),
        same_host_(same_host),
        copier_(copy_threads),
        file_server_(file_staging) {
    std::random_device rd;
    connection_seed_ = (uint64_t{rd()} << 32) ^ rd();
  }
  ~UcxBackend() override;
  Status init();

  const std::string& name() const override { return name_; }
  // shape_, from our own address and a key packed for a probe page.
  Status learn_shape();
  // FILE regions are registered to be served to peers (file_server.h); a peer's FILE
  // regions are reached through their owner (see FileXfer).
  bool can_register(MemType type) const override {
    return type == MemType::Dram || type == MemType::File;
  }
  bool supports(MemType local, MemType remote) const override {
    return local == MemType::Dram && (remote == MemType::Dram || remote == MemType::File);
  }
  // "<transport line>\n<boot id>[ <same-host line>]\n<UCX worker address>" (peer_check.h)
  std::string connection_info() const override {
    if (same_host_ == SameHostMode::Off) return transport_ + "\n" + host_ + "\n" + address_;
    return transport_ + "\n" + host_ + " " + self_.line() + "\n" + address_;
  }

  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc& region) override;
  Status connect(const std::string& agent, std::string_view connection_info) override;
  void disconnect(const std::string& agent) override;
  Status establish(const std::string& agent, std::chrono::milliseconds timeout) override;
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string& agent, MemType type,
                                                           const Desc& region,
                                                           std::string_view remote_info) override;
  Result<std::unique_ptr<BackendRequest>> prepare(Op op, const std::string& agent,
                                                  std::vector<Segment> segments,
                                                  std::optional<std::string> notification) override;
  bool supports_notifications() const override { return true; }
  Status send_notification(const std::string& agent, std::string_view message) override;
  size_t progress(LockWait wait) override;

  // Everything below runs with mu_ held.
  std::mutex mu_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;

  void fail(Completion* c, Error e);
  // For a request destroyed in flight, whose gets and puts cannot be cancelled: drives
  // progress until `quiet()` (called with mu_ held) says no byte of it moves any more, or
  // the peer timeout has passed (then logs that some may). Without mu_ held.
  void wait_quiet(const std::string& peer, const std::function<bool()>& quiet);
  void data_complete(const std::shared_ptr<Completion>& c, ucs_status_t status);
  // One of a request's operations (see Completion::ops_pending) ended with `status`.
  void op_done(Completion* c, ucs_status_t status);
  static void on_op_done(void* request, ucs_status_t status, void* user);
  void finish(Completion* c, ucs_status_t status);
  Status send_am(UcxPeer& peer, std::string_view message, std::shared_ptr<Completion> c);
  void close_peer_locked(const std::shared_ptr<UcxPeer>& peer, Error why);
  void deliver(const NotifHeader& h, std::string sender, std::string message);
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status);

  // Remote files, initiator side.
  void start_file(const std::shared_ptr<FileXfer>& x);
  void pump_file(const std::shared_ptr<FileXfer>& x);
  void resend_file_chunks();  // of the transfers in file_resends_ whose wait is over
  void fail_file(FileXfer& x, Error e);
  void on_file_reply(std::string_view header, const char* body, size_t len, bool rndv);
  // Owner side.
  void on_file_request(std::string_view header, const char* body, size_t len, bool rndv,
                       ucp_ep_h reply_ep);
  void start_file_jobs();
  void reply_file_jobs();
  void send_file_reply(ucp_ep_h ep, const FileReplyHeader& h, const char* body, size_t len,
                       Staging keep, std::string error_text = {});
  static ucs_status_t on_file_am(void* arg, const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param);

  const std::string name_ = "UCX";
  BackendEnv env_;
  const SameHostMode same_host_;
  const SameHostSelf self_;
  ParallelCopier copier_;  // thread-safe: used by requests without mu_
  std::string address_;
  const std::string host_ = host_identity();
  const std::string transport_ = ucx_transport_line();
  UcxWireShape shape_;  // what a peer's address and keys must look like
  std::map<std::string, std::shared_ptr<UcxPeer>> peers_;
  std::map<std::string, Inbox> inboxes_;
  std::vector<std::pair<ucp_ep_h, ucs_status_t>> failed_eps_;  // noted in callbacks, handled after
  uint64_t connection_seed_;
  size_t events_ = 0;
  std::map<uint64_t, std::shared_ptr<FileXfer>> file_xfers_;
  std::set<uint64_t> file_resends_;  // ids of file_xfers_ with chunks to resend (or gone)
  uint64_t next_file_xfer_ = 1;
  FileServer file_server_;  // thread-safe: also used by file_thread_ and by region destructors
  // Requests accepted and not yet replied to: their reply endpoints, by job id. A
  // closed peer's entries go: its jobs then end without a reply. (An endpoint UCX made
  // for an initiator we never connected to is not ours: UCX may destroy it on a peer
  // failure without telling us, as it could while a READ waited for staging before.)
  std::map<uint64_t, ucp_ep_h> file_replies_;
  std::deque<FileJob> file_waiting_;  // for the thread; READs wait here for staging
  uint64_t next_file_job_ = 1;
  FileServingThread file_thread_{file_server_};  // declared after file_server_: stops first
};

class UcxRequest final : public BackendRequest {
 public:
  struct Item {
    void* local;
    uint64_t remote;
    size_t len;
    ucp_mem_h memh;
    UcxRemoteRegion* remote_region;
    char* direct = nullptr;  // same host: the remote bytes, mapped (or our own) here
  };

  UcxRequest(UcxBackend* backend, Op op, std::shared_ptr<UcxPeer> peer, std::vector<Item> items,
             std::optional<std::string> notification,
             std::shared_ptr<const std::vector<FileChunk>> file_chunks = nullptr)
      : backend_(backend),
        op_(op),
        peer_(std::move(peer)),
        items_(std::move(items)),
        notification_(std::move(notification)),
        file_chunks_(std::move(file_chunks)) {
    // Same host: every item either mapped here (memmove) or reachable through CMA.
    same_host_ = !items_.empty() && (peer_->self || peer_->host != nullptr);
    for (const Item& it : items_) {
      if (it.direct != nullptr) {
        if (it.remote_region->mapping) mappings_.push_back(it.remote_region->mapping);
        direct_.push_back(op_ == Op::Write ? CopySpan{it.direct, it.local, it.len}
                                           : CopySpan{it.local, it.direct, it.len});
        continue;
      }
      if (peer_->self || !peer_->host) same_host_ = false;
      cma_local_.push_back({it.local, it.len});
      cma_remote_.push_back({reinterpret_cast<void*>(it.remote), it.len});
    }
  }

  ~UcxRequest() override {
    if (!current_) return;
    // No byte may move after this returns (the caller may free the memory next): a get
    // still writes the local buffer, a put or a file WRITE's chunk still reads it.
    if (file_chunks_) {
      // A READ's replies are copied only while the transfer is listed (erased below); a
      // WRITE's sends are waited for even once it failed and left the list.
      auto x = file_x_;
      if (x && op_ == Op::Write) backend_->wait_quiet(peer_->name, [&] { return x->sending == 0; });
    } else if (!same_host_) {  // the same-host path moved the bytes in post()
      auto c = current_;
      backend_->wait_quiet(peer_->name, [&] {
        return c->state.load(std::memory_order_acquire) != XferState::InProgress;
      });
    }
    std::lock_guard<std::mutex> lock(backend_->mu_);
    // Callbacks still hold the completion; they see the flag and send no notification.
    current_->cancelled = true;
    // Replies that still arrive find no transfer and touch no local memory.
    if (file_xfer_ != 0) backend_->file_xfers_.erase(file_xfer_);
  }

  Status post() override;
  Status post_same_host();
  Status copy_same_host();  // the memmoves through mappings, then CMA
  XferState poll() override {
    return current_ ? current_->state.load(std::memory_order_acquire) : XferState::Idle;
  }
  Error error() const override {
    return current_ ? current_->error : err(ErrorCode::Internal, "not posted");
  }

 private:
  UcxBackend* backend_;
  Op op_;
  std::shared_ptr<UcxPeer> peer_;
  std::vector<Item> items_;
  std::optional<std::string> notification_;
  std::shared_ptr<const std::vector<FileChunk>> file_chunks_;  // set for a peer's FILE
  uint64_t file_xfer_ = 0;                                     // its FileXfer while posted
  std::shared_ptr<FileXfer> file_x_;  // the last post's FileXfer (its sends in flight)
  std::shared_ptr<Completion> current_;
  bool same_host_ = false;                     // copied by this process: post_same_host()
  std::vector<CopySpan> direct_;               // the items copied through mappings
  std::vector<iovec> cma_local_, cma_remote_;  // the items CMA moves
  std::vector<std::shared_ptr<SharedMapping>> mappings_;  // kept while the request lives
};

UcxRemoteRegion::~UcxRemoteRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  if (rkey != nullptr) ucp_rkey_destroy(rkey);
  peer->regions.erase(this);
}

UcxLocalRegion::~UcxLocalRegion() {
  if (shared_fd >= 0) ::close(shared_fd);
  if (memh == nullptr) {
    // Without the lock: this waits for the serving thread's I/O on the file, if any.
    backend->file_server_.remove(file);
    return;
  }
  std::lock_guard<std::mutex> lock(backend->mu_);
  if (ucs_status_t s = ucp_mem_unmap(backend->context_, memh); s != UCS_OK) {
    log(LogLevel::Error, ucx_error(ErrorCode::RegistrationFailed, "ucp_mem_unmap", s).to_string());
  }
}

Status UcxBackend::init() {
  KVBM_TRY(open_worker(UCP_FEATURE_RMA | UCP_FEATURE_AM, &context_, &worker_, &address_));
  KVBM_TRY(learn_shape());
  KVBM_TRY(set_am_handler(worker_, kNotifAmId, &UcxBackend::on_am, this));
  for (unsigned id : {kFileRequestAmId, kFileReplyAmId}) {
    KVBM_TRY(set_am_handler(worker_, id, &UcxBackend::on_file_am, this));
  }
  return {};
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
  file_thread_.stop();
  std::lock_guard<std::mutex> lock(mu_);
  file_waiting_.clear();
  file_replies_.clear();
  auto peers = peers_;
  for (auto& [name, peer] : peers)
    close_peer_locked(peer, err(ErrorCode::Cancelled, "backend shut down"));
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

Result<std::unique_ptr<LocalRegion>> UcxBackend::register_region(MemType type, const Desc& region) {
  if (type != MemType::Dram && type != MemType::File)
    return err(ErrorCode::Unsupported, "UCX registers DRAM and FILE only, not ", to_string(type));
  if (type == MemType::File) {
    file_server_.add(region);
    return std::unique_ptr<LocalRegion>(
        std::make_unique<UcxLocalRegion>(this, nullptr, std::string(kFileRegionInfo), region));
  }
  std::lock_guard<std::mutex> lock(mu_);
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = reinterpret_cast<void*>(region.addr);
  mp.length = region.len;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context_, &mp, &memh); s != UCS_OK) {
    return ucx_error(ErrorCode::RegistrationFailed, "ucp_mem_map", s);
  }
  void* packed = nullptr;
  size_t packed_len = 0;
  if (ucs_status_t s = ucp_rkey_pack(context_, memh, &packed, &packed_len); s != UCS_OK) {
    ucp_mem_unmap(context_, memh);
    return ucx_error(ErrorCode::RegistrationFailed, "ucp_rkey_pack", s);
  }
  DramRegionInfo info;
  info.rkey.assign(static_cast<const char*>(packed), packed_len);
  ucp_rkey_buffer_release(packed);
  int shared_fd = -1;
  if (same_host_ == SameHostMode::Auto) {
    // Memory from a memory file (SystemStorage): same-host peers may map it.
    if (auto shared = kvbm::detail::find_shared_memory(region.addr, region.len)) {
      if (auto ref = describe_shared_file(shared->fd, shared->offset)) {
        info.file = *ref;
        shared_fd = shared->fd;
      } else {
        ::close(shared->fd);
      }
    }
  }
  return std::unique_ptr<LocalRegion>(
      std::make_unique<UcxLocalRegion>(this, memh, encode_region_info(info), Desc{}, shared_fd));
}

void UcxBackend::on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
  // Called from inside ucp_worker_progress: only note it; progress() closes the peer.
  static_cast<UcxBackend*>(arg)->failed_eps_.emplace_back(ep, status);
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
  KVBM_TRY(check_worker_address(agent, connection_info.substr(nl + 1), shape_));
  // The first line: the peer's boot id, then (if it offers one) its same-host line.
  const std::string_view first = connection_info.substr(0, nl);
  const size_t sp = first.find(' ');
  const bool same_host = first.substr(0, sp) == host_;
  // Shared memory is the fast path on one host, but UCX 1.13's shared-memory transports
  // cannot report a failed peer, so they are only selectable without peer error handling.
  // Elsewhere (another host, or UCX_TLS without shared memory) UCX watches the peer.
  const bool shm = same_host && tls_allows_shared_memory();
  const bool peer_errors = !shm;
  const bool self = agent == env_.agent_name && same_host_ != SameHostMode::Off;
  std::shared_ptr<SameHostPeer> host;
  if (shm && !self && same_host_ != SameHostMode::Off && sp != std::string_view::npos) {
    std::string why;
    host = SameHostPeer::reach(first.substr(sp + 1), &why);
    if (!host) {
      log(LogLevel::Info, "UCX: agent '" + agent + "' is on this host, but " + why +
                              ": its memory is reached through UCX");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto peer = std::make_shared<UcxPeer>();
  peer->name = agent;
  peer->connection = connection_seed_++;
  peer->self = self;
  peer->host = std::move(host);
  if (ucs_status_t s = open_endpoint(worker_, connection_info.substr(nl + 1), peer_errors,
                                     &UcxBackend::on_ep_error, this, &peer->ep);
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
  for (auto it = file_xfers_.begin(); it != file_xfers_.end();) {
    auto x = (it++)->second;  // fail_file erases it
    if (x->c->peer == peer) {
      fail_file(*x, err(ErrorCode::Remote, "transfer with agent '", peer->name,
                        "' failed: ", peer->failure->message));
    }
  }
  for (UcxRemoteRegion* r : peer->regions) {
    if (r->rkey != nullptr) ucp_rkey_destroy(r->rkey);
    r->rkey = nullptr;
  }
  if (peer->ep != nullptr) {
    // Requests that came in on this endpoint get no reply: it is about to go.
    std::erase_if(file_replies_, [&](const auto& r) { return r.second == peer->ep; });
    close_endpoint(worker_, peer->ep);
    peer->ep = nullptr;
  }
  auto it = peers_.find(peer->name);
  if (it != peers_.end() && it->second == peer) peers_.erase(it);
}

void UcxBackend::disconnect(const std::string& agent) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end()) return;
  auto peer = it->second;
  close_peer_locked(peer, err(ErrorCode::Remote, "agent '", agent, "' was disconnected"));
  inboxes_.erase(agent);
}

// Agent::connect: a flush of the endpoint completes once its wireup is done (UCX connects
// lazily, on the first operation otherwise).
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

Result<std::unique_ptr<RemoteRegion>> UcxBackend::load_remote_region(const std::string& agent,
                                                                     MemType type, const Desc& desc,
                                                                     std::string_view remote_info) {
  if (type != MemType::Dram && type != MemType::File)
    return err(ErrorCode::Unsupported, "UCX reaches DRAM and FILE only, not ", to_string(type));
  if (type == MemType::File && agent == env_.agent_name) {
    return err(ErrorCode::Unsupported,
               "UCX serves files to peers only; this agent's own files go through POSIX");
  }
  if (remote_info.empty()) return err(ErrorCode::InvalidArgument, "empty UCX remote key");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
  if (type == MemType::File) {
    if (remote_info != kFileRegionInfo) {
      return err(ErrorCode::InvalidArgument, "FILE region of agent '", agent,
                 "' has unknown UCX data of ", remote_info.size(), " bytes");
    }
    auto region = std::make_unique<UcxRemoteRegion>(this, it->second, nullptr, true);
    it->second->regions.insert(region.get());
    return std::unique_ptr<RemoteRegion>(std::move(region));
  }
  auto info = decode_region_info(remote_info);
  if (!info) return info.error();
  if (auto st = check_packed_rkey(info->rkey, shape_); !st) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "': ", st.error().message);
  }
  ucp_rkey_h rkey = nullptr;
  if (ucs_status_t s = ucp_ep_rkey_unpack(it->second->ep, info->rkey.data(), &rkey); s != UCS_OK) {
    return ucx_error(ErrorCode::InvalidArgument, "ucp_ep_rkey_unpack", s);
  }
  auto region = std::make_unique<UcxRemoteRegion>(this, it->second, rkey);
  region->base = desc.addr;
  const std::shared_ptr<SameHostPeer>& host = it->second->host;
  if (host && info->file && same_host_ == SameHostMode::Auto) {
    auto mapping = SharedMapping::map(*host, *info->file, desc.len);
    if (mapping) {
      region->mapping = std::move(*mapping);
    } else {
      log(LogLevel::Info, "UCX: region " + kvbm::detail::hex(desc.addr) + " of agent '" + agent +
                              "' is not mapped here (" + mapping.error().message +
                              "); CMA reaches it");
    }
  }
  it->second->regions.insert(region.get());
  return std::unique_ptr<RemoteRegion>(std::move(region));
}

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

void UcxBackend::fail(Completion* c, Error e) {
  c->error = std::move(e);
  c->state.store(XferState::Error, std::memory_order_release);
  ++events_;
}

void UcxBackend::finish(Completion* c, ucs_status_t status) {
  if (status != UCS_OK) {
    fail(c, ucx_error(ErrorCode::Remote, "notification to agent '" + c->peer->name + "'", status));
    return;
  }
  c->state.store(XferState::Done, std::memory_order_release);
  ++events_;
}

// The data of a request is complete at the target (the flush returned): now, and only
// now, its notification goes out.
void UcxBackend::data_complete(const std::shared_ptr<Completion>& c, ucs_status_t status) {
  if (status != UCS_OK) {
    const char* what =
        c->peer->failure ? c->peer->failure->message.c_str() : ucs_status_string(status);
    fail(c.get(),
         err(ErrorCode::Remote, "transfer with agent '", c->peer->name, "' failed: ", what));
    return;
  }
  if (c->cancelled || !c->notification->has_value()) {
    finish(c.get(), UCS_OK);
    return;
  }
  if (auto st = send_am(*c->peer, **c->notification, c); !st) fail(c.get(), st.error());
}

Status UcxBackend::send_am(UcxPeer& peer, std::string_view message, std::shared_ptr<Completion> c) {
  if (peer.failure || peer.ep == nullptr) {
    return err(ErrorCode::Remote, "agent '", peer.name,
               "': ", peer.failure ? peer.failure->message : "not connected");
  }
  NotifHeader h{kNotifMagic, static_cast<uint32_t>(env_.agent_name.size()), peer.connection,
                peer.next_seq++};
  c->notif_buffer.assign(reinterpret_cast<const char*>(&h), sizeof h);
  c->notif_buffer += env_.agent_name;
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.user_data = new std::shared_ptr<Completion>(c);
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    auto* holder = static_cast<std::shared_ptr<Completion>*>(user);
    (*holder)->backend->finish(holder->get(), status);
    delete holder;
    ucp_request_free(request);
  };
  ucs_status_ptr_t r = ucp_am_send_nbx(peer.ep, kNotifAmId, c->notif_buffer.data(),
                                       c->notif_buffer.size(), message.data(), message.size(), &p);
  if (UCS_PTR_IS_PTR(r)) return {};  // the callback finishes, and frees the request
  delete static_cast<std::shared_ptr<Completion>*>(p.user_data);
  if (UCS_PTR_IS_ERR(r))
    return ucx_error(ErrorCode::Remote, "ucp_am_send_nbx to agent '" + peer.name + "'",
                     UCS_PTR_STATUS(r));
  finish(c.get(), UCS_OK);
  return {};
}

Status UcxBackend::send_notification(const std::string& agent, std::string_view message) {
  if (message.size() > kMaxNotifBytes) {
    return err(ErrorCode::InvalidArgument, "notification of ", message.size(), " bytes exceeds ",
               kMaxNotifBytes);
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
  auto c = std::make_shared<Completion>();
  c->backend = this;
  c->peer = it->second;
  c->owned = std::string(message);  // alive until the send completes, with the completion
  c->notification = &c->owned;
  return send_am(*it->second, *c->owned, c);
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
  std::shared_ptr<Completion> c;
  {
    std::lock_guard<std::mutex> lock(backend_->mu_);
    if (current_ && current_->state.load() == XferState::InProgress) {
      return err(ErrorCode::InvalidArgument, "UCX request is already in progress");
    }
    if (peer_->failure)
      return err(ErrorCode::Remote, "agent '", peer_->name, "': ", peer_->failure->message);
    c = std::make_shared<Completion>();
    c->backend = backend_;
    c->peer = peer_;
    c->notification = &notification_;
    current_ = c;
    if (peer_->host && peer_->host->exited()) {
      backend_->close_peer_locked(peer_, err(ErrorCode::Remote, "agent '", peer_->name, "' (pid ",
                                             peer_->host->pid(), ") has exited"));
      backend_->fail(c.get(), err(ErrorCode::Remote, "transfer with agent '", peer_->name,
                                  "' failed: ", peer_->failure->message));
      return c->error;
    }
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
  auto c = std::make_shared<Completion>();
  c->backend = backend_;
  c->peer = peer_;
  c->notification = &notification_;
  current_ = c;
  if (file_chunks_) {
    if (file_xfer_ != 0) backend_->file_xfers_.erase(file_xfer_);
    auto x = std::make_shared<FileXfer>();
    x->id = file_xfer_ = backend_->next_file_xfer_++;
    file_x_ = x;
    x->op = op_;
    x->c = c;
    x->chunks = file_chunks_;
    x->replied.assign(file_chunks_->size(), 0);
    backend_->start_file(x);
    return {};
  }
  // Every get and put reports its own completion, and the flush (a WRITE's proof that the
  // bytes are at the target) one more: the request is done when all have called back,
  // and failed if any of them failed.
  c->ops_pending = 1;  // post()'s own, dropped below
  c->ops_keep = c;
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
  auto* c = static_cast<Completion*>(user);
  c->backend->op_done(c, status);
  // Freed here, not after posting: a request freed early never calls back.
  ucp_request_free(request);
}

void UcxBackend::op_done(Completion* c, ucs_status_t status) {
  if (status != UCS_OK && c->ops_status == UCS_OK) c->ops_status = status;
  if (--c->ops_pending != 0) return;
  auto keep = std::move(c->ops_keep);
  status = c->ops_status;
  // The endpoint's failure may be noted in the same progress call as a flush that still
  // reported success: that flush proves nothing.
  if (status == UCS_OK) {
    for (const auto& [ep, s] : failed_eps_) {
      if (ep == c->peer->ep) status = s;
    }
  }
  data_complete(keep, status);
}

ucs_status_t UcxBackend::on_am(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxBackend*>(arg);
  // Bytes from the network: check every length before use.
  NotifHeader h{};
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || header_length < sizeof h ||
      length > kMaxNotifBytes) {
    log(LogLevel::Warn, "UCX: dropped a malformed notification");
    return UCS_OK;
  }
  std::memcpy(&h, header, sizeof h);
  if (h.magic != kNotifMagic || h.name_len == 0 || h.name_len != header_length - sizeof h) {
    log(LogLevel::Warn, "UCX: dropped a notification with a bad header");
    return UCS_OK;
  }
  std::string sender(static_cast<const char*>(header) + sizeof h, h.name_len);
  self->deliver(h, std::move(sender), std::string(static_cast<const char*>(data), length));
  return UCS_OK;
}

void UcxBackend::deliver(const NotifHeader& h, std::string sender, std::string message) {
  Inbox& box = inboxes_[sender];
  if (box.connection != h.connection) box = Inbox{h.connection, 0, {}};
  if (h.seq != box.next_seq) {
    if (h.seq > box.next_seq && box.pending.size() < kMaxReorder) {
      box.pending.emplace(h.seq, std::move(message));
      return;
    }
    log(LogLevel::Warn,
        "UCX: notification sequence from '" + sender + "' broken; delivering as received");
    box.next_seq = h.seq;
  }
  ++box.next_seq;
  ++events_;
  env_.on_notification(Notification{sender, std::move(message)});
  for (auto it = box.pending.begin(); it != box.pending.end() && it->first == box.next_seq;) {
    env_.on_notification(Notification{sender, std::move(it->second)});
    ++box.next_seq;
    it = box.pending.erase(it);
  }
}

size_t UcxBackend::progress(LockWait wait) {
  // The progress thread never waits for the lock (as in the CUDA backend): a caller
  // holding it is posting, and a thread queued behind it turns each unlock into a futex
  // wake-up. Agent::progress waits: taking the lock is what orders the bytes this
  // worker copied in (UCX's emulated PUT) before the caller's reads.
  auto lock = progress_lock(mu_, wait);
  if (!lock.owns_lock()) return 0;
  events_ = 0;
  // Bounded: under a steady stream of arriving messages (peers resending file chunks the
  // owner was too busy for, say) an unbounded drain never returned, and the replies
  // below, which free the owner's staging buffers, never went out.
  for (int i = 0; i < kMaxProgressRounds && ucp_worker_progress(worker_) != 0; ++i) {
  }
  reply_file_jobs();
  if (!file_waiting_.empty()) start_file_jobs();
  if (!file_resends_.empty()) resend_file_chunks();
  if (!failed_eps_.empty()) {
    auto failed = std::move(failed_eps_);
    failed_eps_.clear();
    for (auto& [ep, status] : failed) {
      for (auto& [name, peer] : peers_) {
        if (peer->ep != ep) continue;
        close_peer_locked(peer, ucx_error(ErrorCode::Remote,
                                          "connection to agent '" + name + "' failed", status));
        break;
      }
    }
    ++events_;
  }
  return events_;
}

// ---- Remote files. The initiator sends each chunk as an active message (a WRITE's
// bytes ride along) and keeps up to kFileWindow of a transfer in flight; the owner's serving
// thread (file_serving_thread.h) does the file I/O through a staging buffer, off the
// lock, and progress() sends the reply (a READ's bytes ride along). Both directions use
// eager messages, so each arrives whole in its callback. The owner's staging memory is
// capped: READs queue for a buffer; a WRITE whose bytes find none is answered "busy"
// and resent by its initiator after a short wait.

struct FileSendCtx {
  std::string header;
  std::string error_text;
  Staging keep{nullptr, {}};  // the owner's staging buffer, until the reply is sent
  std::function<void(ucs_status_t)> done;
};

// Sends one eager active message; `done` (if any) runs on completion, with mu_ held.
void send_file_am(ucp_ep_h ep, unsigned id, std::unique_ptr<FileSendCtx> ctx, const void* body,
                  size_t len, bool reply_ep) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER | (reply_ep ? UCP_AM_SEND_FLAG_REPLY : 0);
  p.user_data = ctx.get();
  p.cb.send = [](void* request, ucs_status_t status, void* user) {
    std::unique_ptr<FileSendCtx> c(static_cast<FileSendCtx*>(user));
    if (c->done) c->done(status);
    ucp_request_free(request);
  };
  if (!ctx->error_text.empty()) {
    body = ctx->error_text.data();
    len = ctx->error_text.size();
  }
  ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, id, ctx->header.data(), ctx->header.size(), body, len, &p);
  if (UCS_PTR_IS_PTR(r)) {
    (void)ctx.release();  // the callback owns it now
    return;
  }
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
}

void UcxBackend::fail_file(FileXfer& x, Error e) {
  if (x.c->state.load() == XferState::InProgress) fail(x.c.get(), std::move(e));
  file_xfers_.erase(x.id);
}

void UcxBackend::start_file(const std::shared_ptr<FileXfer>& x) {
  file_xfers_[x->id] = x;
  pump_file(x);
}

void UcxBackend::pump_file(const std::shared_ptr<FileXfer>& x) {
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
      fail_file(*x, err(ErrorCode::Remote, "agent '", peer.name,
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
      auto it = file_xfers_.find(id);
      if (it == file_xfers_.end()) return;
      auto keep = it->second;
      fail_file(*keep, ucx_error(ErrorCode::Remote,
                                 "sending file chunk " + std::to_string(seq) + " to agent '" +
                                     keep->c->peer->name + "'",
                                 s));
    };
    const bool write = x->op == Op::Write;
    send_file_am(peer.ep, kFileRequestAmId, std::move(ctx), write ? c.local : nullptr,
                 write ? c.len : 0, true);
  }
}

void UcxBackend::wait_quiet(const std::string& peer, const std::function<bool()>& quiet) {
  const auto until = std::chrono::steady_clock::now() + env_.peer_timeout;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (quiet()) return;
    }
    if (std::chrono::steady_clock::now() >= until) {
      log(LogLevel::Warn, "UCX: a request with agent '" + peer +
                              "' destroyed in flight did not end within the peer timeout; "
                              "its bytes may still move");
      return;
    }
    progress(LockWait::Wait);
  }
}

void UcxBackend::resend_file_chunks() {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = file_resends_.begin(); it != file_resends_.end();) {
    auto found = file_xfers_.find(*it);
    if (found == file_xfers_.end() || found->second->resend.empty()) {
      it = file_resends_.erase(it);
      continue;
    }
    ++it;  // pump_file may fail the transfer, which erases it from file_xfers_ only
    if (now >= found->second->resend_at) pump_file(std::shared_ptr<FileXfer>(found->second));
  }
}

void UcxBackend::on_file_reply(std::string_view header, const char* body, size_t len, bool rndv) {
  auto h = decode_file_reply(header);
  if (!h) {
    log(LogLevel::Warn, "UCX: dropped a file reply: " + h.error().message);
    return;
  }
  auto it = file_xfers_.find(h->xfer);
  if (it == file_xfers_.end()) return;  // cancelled, or failed already
  auto x = it->second;
  const std::string& name = x->c->peer->name;
  if (h->seq >= x->next || x->replied[h->seq] != FileXfer::kUnanswered || rndv) {
    fail_file(*x, err(ErrorCode::Remote, "agent '", name, "' sent a file reply for chunk ", h->seq,
                      " that was not asked for"));
    return;
  }
  const FileChunk& c = (*x->chunks)[h->seq];
  if (h->busy) {
    if (len != 0 || h->error) {
      fail_file(*x, err(ErrorCode::Remote, "agent '", name, "' sent a malformed busy reply"));
      return;
    }
    x->replied[h->seq] = FileXfer::kToResend;
    x->resend.push_back(h->seq);
    --x->in_flight;
    x->window = 1;
    x->backoff = std::clamp(2 * x->backoff, kFileResendFirst, kFileResendMax);
    x->resend_at = std::chrono::steady_clock::now() + x->backoff;
    file_resends_.insert(x->id);
    ++events_;
    log(LogLevel::Debug, "UCX: agent '" + name + "' has no staging memory free; file chunk " +
                             std::to_string(h->seq) + " (fd " + std::to_string(c.fd) + " offset " +
                             std::to_string(c.offset) + ") is resent in " +
                             std::to_string(x->backoff.count()) + " us");
    return;
  }
  if (h->error) {
    fail_file(*x, err(*h->error, "agent '", name, "' file fd ", c.fd, " offset ", c.offset, " len ",
                      c.len, ": ", std::string_view(body, std::min(len, kMaxFileErrorBytes))));
    return;
  }
  const uint64_t want = x->op == Op::Read ? c.len : 0;
  if (len != want) {
    fail_file(*x, err(ErrorCode::Remote, "agent '", name, "' replied ", len, " bytes for file fd ",
                      c.fd, " offset ", c.offset, " len ", c.len));
    return;
  }
  if (x->op == Op::Read) std::memcpy(c.local, body, len);
  x->replied[h->seq] = FileXfer::kReplied;
  x->backoff = std::chrono::microseconds{0};
  x->window = std::min(x->window + 1, kFileWindow);
  --x->in_flight;
  ++x->done;
  ++events_;
  if (x->done == x->chunks->size()) {
    // Every byte is in place (READ: here; WRITE: in the owner's file): now the notification.
    file_xfers_.erase(x->id);
    data_complete(x->c, UCS_OK);
    return;
  }
  pump_file(x);
}

void UcxBackend::on_file_request(std::string_view header, const char* body, size_t len, bool rndv,
                                 ucp_ep_h reply_ep) {
  auto h = decode_file_request(header);
  if (!h || reply_ep == nullptr) {
    log(LogLevel::Warn, "UCX: dropped a file request: " +
                            (h ? std::string("no reply endpoint") : h.error().message));
    return;
  }
  const uint64_t want = h->op == Op::Write ? h->len : 0;
  if (rndv || len != want) {
    send_file_reply(reply_ep, {h->xfer, h->seq, ErrorCode::Remote}, nullptr, 0, nullptr,
                    "malformed file request");
    return;
  }
  FileJob job{next_file_job_++, *h, Staging(nullptr, {&file_server_}), {}};
  if (h->op == Op::Write) {
    // The bytes live only as long as this callback: without a staging buffer for them
    // now, the initiator sends them again later.
    bool at_cap = false;
    job.data = file_server_.acquire(&at_cap);
    if (!job.data && at_cap) {
      send_file_reply(reply_ep, {h->xfer, h->seq, std::nullopt, true}, nullptr, 0, nullptr);
      return;
    }
    if (!job.data) {
      send_file_reply(reply_ep, {h->xfer, h->seq, ErrorCode::AllocationFailed}, nullptr, 0, nullptr,
                      "no staging memory at the owner");
      return;
    }
    std::memcpy(job.data.get(), body, len);
  }
  file_replies_[job.id] = reply_ep;
  file_waiting_.push_back(std::move(job));
}

// Hands the waiting jobs to the serving thread, in order; a READ first gets its staging
// buffer, and waits (with those behind it) while all of them are in use.
void UcxBackend::start_file_jobs() {
  std::vector<FileJob> ready;
  while (!file_waiting_.empty()) {
    FileJob& j = file_waiting_.front();
    auto reply = file_replies_.find(j.id);
    if (reply == file_replies_.end()) {  // its peer is gone
      file_waiting_.pop_front();
      continue;
    }
    if (j.h.op == Op::Read) {
      bool at_cap = false;
      j.data = file_server_.acquire(&at_cap);
      if (!j.data && at_cap) break;  // until a reply frees one
      if (!j.data) {
        send_file_reply(reply->second, {j.h.xfer, j.h.seq, ErrorCode::AllocationFailed}, nullptr, 0,
                        nullptr,
                        "no staging buffer for file fd " + std::to_string(j.h.fd) + " offset " +
                            std::to_string(j.h.offset));
        file_replies_.erase(reply);
        file_waiting_.pop_front();
        ++events_;
        continue;
      }
    }
    ready.push_back(std::move(j));
    file_waiting_.pop_front();
  }
  file_thread_.submit(ready);
}

// Sends the replies of the jobs the serving thread has done: a READ's bytes from its
// staging buffer (back to the pool once sent), or the error that names file and offset.
void UcxBackend::reply_file_jobs() {
  for (FileJob& j : file_thread_.take_done()) {
    ++events_;
    auto reply = file_replies_.find(j.id);
    if (reply == file_replies_.end()) continue;  // its peer is gone
    const ucp_ep_h ep = reply->second;
    file_replies_.erase(reply);
    const FileRequestHeader& h = j.h;
    if (!j.status) {
      const Error& e = j.status.error();
      send_file_reply(ep, {h.xfer, h.seq, e.code}, nullptr, 0, nullptr,
                      e.message.substr(0, kMaxFileErrorBytes));
    } else if (h.op == Op::Write) {
      send_file_reply(ep, {h.xfer, h.seq, std::nullopt}, nullptr, 0, nullptr);
    } else {
      const char* data = j.data.get();
      send_file_reply(ep, {h.xfer, h.seq, std::nullopt}, data, h.len, std::move(j.data));
    }
  }
}

void UcxBackend::send_file_reply(ucp_ep_h ep, const FileReplyHeader& h, const char* body,
                                 size_t len, Staging keep, std::string error_text) {
  auto ctx = std::make_unique<FileSendCtx>();
  ctx->header = encode(h);
  ctx->error_text = std::move(error_text);
  ctx->keep = std::move(keep);
  // The staging buffer goes back to the pool with ctx, once the reply has left.
  send_file_am(ep, kFileReplyAmId, std::move(ctx), body, len, false);
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
    self->on_file_request(h, body, length, rndv, param->reply_ep);
  } else {
    self->on_file_reply(h, body, length, rndv);
  }
  return UCS_OK;
}

}  // namespace

Result<std::unique_ptr<Backend>> make_ucx_backend(const BackendEnv& env,
                                                  const BackendParams& params) {
  // UCX itself is configured through UCX_* environment variables; the parameters are
  // ours: same_host (same_host.h), defaulting to KVBM_UCX_SAME_HOST, else auto;
  // file_staging_mib, the staging memory for serving this agent's files to peers,
  // defaulting to KVBM_UCX_FILE_STAGING_MIB, else 64; and copy_threads, the helper threads
  // of the same-host path's large copies (parallel_copy.h), defaulting to
  // KVBM_UCX_COPY_THREADS, else a quarter of the cores, at most 3.
  if (auto st = check_param_keys("UCX", params, {"same_host", "file_staging_mib", "copy_threads"});
      !st) {
    return err(ErrorCode::InvalidArgument, st.error().message,
               "; UCX itself reads UCX_* environment variables");
  }
  BackendParams p = params;
  for (const auto& [key, var] : {std::pair{"same_host", "KVBM_UCX_SAME_HOST"},
                                 std::pair{"file_staging_mib", "KVBM_UCX_FILE_STAGING_MIB"},
                                 std::pair{"copy_threads", "KVBM_UCX_COPY_THREADS"}}) {
    const char* env_value = std::getenv(var);
    if (env_value != nullptr && *env_value != '\0') p.emplace(key, env_value);  // params win
  }
  auto mode = parse_same_host_mode(p.count("same_host") != 0 ? p.at("same_host") : "auto");
  if (!mode) return mode.error();
  static_assert(kFileChunkBytes == 1 << 20, "file_staging_mib counts staging buffers");
  auto staging =
      number_param("UCX", p, "file_staging_mib", FileServer::kDefaultMaxStaging, 1, 1 << 16);
  if (!staging) return staging.error();
  auto copy_threads =
      number_param("UCX", p, "copy_threads", ParallelCopier::default_threads(), 0, 64);
  if (!copy_threads) return copy_threads.error();
  auto backend = std::make_unique<UcxBackend>(env, *mode, *staging, *copy_threads);
  KVBM_TRY(backend->init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kvbm::xfer::detail
