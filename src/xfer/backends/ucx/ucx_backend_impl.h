// The UCX backend's internals (ucx_backend.h says what it does), shared by its units:
// ucx_backend.cc (the backend: worker, peers, progress, parameters), ucx_regions.cc
// (local and remote regions), ucx_rma.cc (READ/WRITE requests: gets and puts, and the
// same-host path), ucx_notify.cc (notifications, after the data), file_client.cc and
// file_service.cc (a peer's files, and ours served to peers), am_rma.cc (RMA over active
// messages where UCX would emulate it). Not a public interface.
//
// Thread safety: everything below UcxBackend's "mu_ held" line runs with mu_ held.
#pragma once

#include <sys/uio.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "copy/parallel_copy.h"
#include "kvbm/result.h"
#include "xfer/backend.h"
#include "xfer/backends/ucx/am_rma.h"
#include "xfer/backends/ucx/file_client.h"
#include "xfer/backends/ucx/file_service.h"
#include "xfer/backends/ucx/notifications.h"
#include "xfer/backends/ucx/peer_check.h"
#include "xfer/backends/ucx/receive_probe.h"
#include "xfer/backends/ucx/same_host.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::ucx {

using kvbm::detail::CopySpan;  // the same-host path's copies: copy/parallel_copy.h
using kvbm::detail::ParallelCopier;

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
  std::string packed;                      // the peer's packed key, unpacked again on a new worker
};

struct UcxPeer {
  std::string name;
  std::string address;  // its worker address, to connect again from a new worker
  bool shm = false;     // reached over shared memory (no UCX peer error handling)
  ucp_ep_h ep = nullptr;
  std::optional<Error> failure;     // set when the connection failed or was closed
  std::atomic<bool> failed{false};  // failure is set (read without the backend lock)
  std::set<UcxRemoteRegion*> regions;
  uint64_t connection = 0;
  uint64_t next_seq = 0;
  bool self = false;                   // this agent: its regions are our own addresses
  std::shared_ptr<SameHostPeer> host;  // a verified process on this host, or null
  bool am_rma = false;                 // READ/WRITE go through am_rma.h, not ucp_put/get
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
  Desc memory{};  // a DRAM region: what peers reach (am_rma.h serves it)
};

// A FILE region's remote_info: it only says that this agent serves the file over UCX.
constexpr std::string_view kFileRegionInfo = "ucx-file-1";

// State one post() shares with UCX callbacks; outlives the request if it is cancelled.
struct PostState {
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
  std::optional<Error> op_error;  // what the first failed operation said, where it said more
  std::shared_ptr<PostState> ops_keep;
  // Parts completed so far (gets, puts, file chunks; BackendRequest::progress): written
  // under the backend lock, read without it by the request's owner.
  std::atomic<uint64_t> parts_done{0};
};

class UcxRequest;

class UcxBackend final : public Backend {
 public:
  // file_staging: the staging buffers (kFileChunkBytes each) this agent uses at once to
  // serve its files to peers; copy_threads: the same-host path's helper threads
  // (copy/parallel_copy.h).
  UcxBackend(BackendEnv env, SameHostMode same_host, RmaMode rma, size_t file_staging,
             size_t copy_threads)
      : env_(std::move(env)),
        same_host_(same_host),
        rma_(rma),
        copier_(copy_threads),
        files_served_(file_staging) {}
  ~UcxBackend() override;
  Status init();

  const std::string& name() const override { return name_; }
  // shape_, from our own address and a key packed for a probe page.
  Status learn_shape();
  // FILE regions are registered to be served to peers (file_service.h); a peer's FILE
  // regions are reached through their owner (file_client.h).
  bool can_register(MemType type) const override {
    return type == MemType::Dram || type == MemType::File;
  }
  bool supports(MemType local, MemType remote) const override {
    return local == MemType::Dram && (remote == MemType::Dram || remote == MemType::File);
  }
  // "<transport line>\n<boot id>[ <same-host line>]\n<UCX worker address>" (peer_check.h)
  std::string connection_info() const override {
    std::lock_guard<std::mutex> lock(mu_);  // the address changes with the worker
    if (same_host_ == SameHostMode::Off) return transport_ + "\n" + host_ + "\n" + address_;
    return transport_ + "\n" + host_ + " " + self_.line() + "\n" + address_;
  }

  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc& region) override;
  Status connect(const std::string& agent, std::string_view connection_info) override;
  void disconnect(const std::string& agent) override;
  // A peer reached over shared memory may have died writing into our receive queue
  // (receive_probe.h): if the queue is blocked, the worker is replaced (replace_worker).
  void peer_failed(const std::string& agent) override;
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

 private:
  // The backend's own units: its requests, regions and file client share its lock and state.
  friend class UcxRequest;
  friend class UcxLocalRegion;
  friend class UcxRemoteRegion;
  friend class FileClient;
  friend class AmRma;

  // Everything below runs with mu_ held.
  mutable std::mutex mu_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;

  void fail(PostState* c, Error e);
  // For a request destroyed in flight, whose gets and puts cannot be cancelled (or a region
  // deregistered while peers' operations on it run): drives progress until `quiet()`
  // (called with mu_ held) says no byte of `what` moves any more, or the peer timeout has
  // passed (then logs that some may). Without mu_ held.
  void wait_quiet(const std::string& what, const std::function<bool()>& quiet);
  void data_complete(const std::shared_ptr<PostState>& c, ucs_status_t status);
  // One of a request's operations (see PostState::ops_pending) ended with `status`.
  void op_done(PostState* c, ucs_status_t status);
  static void on_op_done(void* request, ucs_status_t status, void* user);
  void finish(PostState* c, ucs_status_t status);
  Status send_am(UcxPeer& peer, std::string_view message, std::shared_ptr<PostState> c);
  void close_peer_locked(const std::shared_ptr<UcxPeer>& peer, Error why);
  void disconnect_locked(const std::string& agent);
  Status set_handlers();  // the active-message handlers of worker_
  // After a peer over shared memory failed: replaces the worker where its receive queue is
  // blocked (receive_probe.h). True when it did: the caller, once it has released mu_,
  // calls connection_changed().
  bool recover_receive_queue(const std::string& failed_agent);
  void connection_changed();  // tells the agent (without mu_ held)
  bool receive_blocked();     // whether worker_'s shared-memory receive queue is blocked
  // A new worker in place of worker_: every request in flight ends with an error, the
  // connected peers are connected again from the new one (their keys unpacked again), and
  // connection_info() gives its address. Peers that loaded ours before must load it again.
  Status replace_worker();
  void retire_worker();                                  // replace_worker's first step
  void reconnect_peers(const std::string& old_address);  // and its last
  void end_kept_posts(ucs_status_t status);  // posts the old worker will never call back
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  // Routes the remote-file protocol's messages: requests to files_served_, replies to files_.
  static ucs_status_t on_file_am(void* arg, const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param);
  // A peer's poll for the file replies owed to it (file_service.h).
  static ucs_status_t on_file_poll(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param);

  const std::string name_ = "UCX";
  BackendEnv env_;
  const SameHostMode same_host_;
  const RmaMode rma_;
  const SameHostSelf self_;
  ParallelCopier copier_;  // thread-safe: used by requests without mu_
  std::string address_;
  const std::string host_ = host_boot_id();
  const std::string transport_ = ucx_transport_line();
  UcxWireShape shape_;  // what a peer's address and keys must look like
  std::map<std::string, std::shared_ptr<UcxPeer>> peers_;
  NotificationInbox inbox_;
  FailedEndpoints failed_eps_;  // noted in callbacks, handled after
  uint64_t connection_seed_ = random_seed();
  size_t events_ = 0;
  // Posts whose operations have not all called back (each keeps itself alive in
  // ops_keep): released at teardown, once the worker that would call them back is gone.
  std::set<PostState*> kept_;
  FileClient files_{*this};   // this agent's transfers with peers' files
  FileService files_served_;  // this agent's files, served to peers
  AmRma am_{*this};           // READ/WRITE over active messages, both sides
  ReceiveProbe probe_;
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
    if (!same_host_ && peer_->am_rma) {
      am_spans_.reserve(items_.size());
      for (const Item& it : items_)
        am_spans_.push_back({static_cast<char*>(it.local), it.remote, it.len});
    }
  }

  ~UcxRequest() override;

  Status post() override;
  Status post_same_host();
  Status copy_same_host();  // the memmoves through mappings, then CMA
  XferState poll() override {
    return current_ ? current_->state.load(std::memory_order_acquire) : XferState::Idle;
  }
  Error error() const override {
    return current_ ? current_->error : err(ErrorCode::Internal, "not posted");
  }
  uint64_t progress() const override {
    return current_ ? current_->parts_done.load(std::memory_order_relaxed) : 0;
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
  std::shared_ptr<PostState> current_;
  bool same_host_ = false;                     // copied by this process: post_same_host()
  std::vector<CopySpan> direct_;               // the items copied through mappings
  std::vector<iovec> cma_local_, cma_remote_;  // the items CMA moves
  std::vector<std::shared_ptr<SharedMapping>> mappings_;  // kept while the request lives
  std::vector<AmSpan> am_spans_;  // the items, where the peer is reached through am_rma.h
};

}  // namespace kvbm::xfer::detail::ucx
