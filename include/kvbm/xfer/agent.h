// The transfer agent, in the shape of NIXL's: a named agent owns backends (UCX, ...),
// registers memory, publishes its metadata, loads its peers' metadata, and READs or
// WRITEs their registered memory, with notifications.
//
//   auto a = kvbm::xfer::Agent::create("prefill-0").value();
//   auto reg = a->register_memory({MemType::Dram, {{addr, len, 0}}}).value();
//   std::string md = a->local_metadata().value();           // give to peers
//   std::string peer = a->load_remote_metadata(peer_md).value();
//   auto req = a->create_request(Op::Write, local, remote, peer, "block 7 ready").value();
//   req->post(); req->wait(std::chrono::seconds(5));
//
// Over the TCP side channel an agent serves its metadata and, under keys, items it
// publishes (a remote descriptor, say), so that a peer needs only host, port and key:
//   uint16_t port = a->listen("0.0.0.0", 0).value();
//   a->publish("blocks/7", bytes);
//   b->fetch_remote_metadata(host, port);                         // on the peer
//   std::string item = b->fetch_published(host, port, "blocks/7").value();
//
// Ownership: Agent is held by unique_ptr. Registrations and requests it returns may
// outlive it: destroying the agent ends its requests (cancelled, or waited for where
// bytes may still move; then they fail with Cancelled) and releases its registrations.
// Thread safety: every Agent method may be called from many threads at once. A Request
// may be used from one thread at a time, and not while its agent is being destroyed.
#pragma once

#include "kvbm/export.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/storage/registration.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer {

/// Backend creation parameters, passed through to the backend ("queue_depth" = "64").
using BackendParams = std::map<std::string, std::string>;

/// What Agent::create builds.
struct KVBM_API AgentConfig {
  /// Backends created with the agent (UCX: host memory, and peers' files: a peer READs or
  /// WRITEs this agent's registered FILE regions as it would DRAM, served by this agent's
  /// progress through a staging buffer; POSIX: this agent's own files).
  /// Others ("GDS", "CUDA") can be added with create_backend().
  std::vector<std::string> backends = {"UCX", "POSIX"};
  /// Also create the "CUDA" backend (GPU memory: local copies, CUDA IPC, staged path)
  /// when this build has CUDA and a GPU is usable. Without a GPU it is silently left out
  /// (VRAM then has no backend: Unsupported), so one config serves both kinds of machine.
  /// Listing "CUDA" in `backends` instead makes its absence an error.
  bool add_cuda_if_gpu = true;
  /// true: an internal thread drives communication. false: the caller drives it through
  /// Request::wait/status and Agent::progress (lowest latency, no extra thread).
  bool progress_thread = true;
  /// A request that involves a peer which stops answering ends in an error (Timeout,
  /// naming the peer) after this: counted from post(), and again from each part of the
  /// request that completes where the backend reports parts (UCX: each get, put or chunk),
  /// so a large transfer that keeps moving over a slow link is not cut off. A dead
  /// peer's endpoint error usually ends the request sooner (Remote).
  std::chrono::milliseconds peer_timeout{5000};
  /// Largest metadata blob accepted from a peer (side channel and load_remote_metadata),
  /// and largest item this agent publishes or fetches (publish, fetch_published).
  size_t max_metadata_bytes = 64 << 20;
  /// etcd discovery (optional; without endpoints the side channel is the only way). The
  /// endpoints ("http://host:2379" or "host:2379"; KVBM_ETCD_ENDPOINTS, comma-separated,
  /// when empty) and the key prefix (KVBM_ETCD_PREFIX when empty, else "kvbm/"). What the
  /// agent publishes is kept under a lease of etcd_lease_ttl, refreshed while it lives, so
  /// a peer that dies disappears from etcd within the ttl.
  std::vector<std::string> etcd_endpoints{};
  std::string etcd_prefix{};                ///< see etcd_endpoints
  std::chrono::seconds etcd_lease_ttl{10};  ///< see etcd_endpoints
  /// A key shared by the agents that may use each other (README "Authentication"): with
  /// one, this agent serves its side channel only to requests authenticated with it, seals
  /// its metadata with an HMAC made with it, sends authenticated requests, and loads only
  /// metadata and side-channel replies made with it. Empty: $KVBM_AUTH_KEY, else the
  /// contents of the file named by $KVBM_AUTH_KEY_FILE; neither: off. At least 16 bytes.
  std::string auth_key{};
};

/// The registration of memory with an agent. Deregisters on release() or destruction.
/// Also a storage RegistrationHandle, so a storage can own it (Agent::register_storage).
class KVBM_API MemoryRegistration : public RegistrationHandle {
 public:
  ~MemoryRegistration() override = default;
  /// The agent it is registered with.
  virtual const std::string& agent_name() const = 0;
  /// The registered regions.
  virtual const DescList& regions() const = 0;
};

class PreparedDescs;  // below: descriptors resolved once for requests by index

/// Where a Request is: never posted, in flight, finished, failed.
enum class XferState : uint8_t { Idle, InProgress, Done, Error };
KVBM_API const char* to_string(XferState state);

/// A prepared transfer. Created validated; post() starts it, and it can be posted again
/// once it is Done or Error. Destroying a request that is in flight cancels what has not
/// started and waits for what cannot be cancelled (a UCX get or put under way, a file
/// chunk being sent, a GPU copy or a disk I/O), so that no byte of its local memory moves
/// once the destructor has returned; a UCX peer that never answers is waited for up to
/// the peer timeout (then a warning is logged).
class KVBM_API Request {
 public:
  virtual ~Request() = default;
  /// Starts the transfer. InvalidArgument if it is already in progress; Remote if the
  /// peer is known to be gone.
  virtual Status post() = 0;
  /// Current state; drives progress when the agent has no progress thread.
  virtual XferState state() = 0;
  /// The error of a request in state Error.
  virtual Error error() const = 0;
  /// Waits until Done (OK) or Error (its error); Timeout if neither within `timeout`.
  virtual Status wait(std::chrono::milliseconds timeout) = 0;
};

/// A named transfer agent (NIXL's nixlAgent): registers local memory and files with its
/// backends, exchanges metadata with peers, and READs and WRITEs their registered memory.
class KVBM_API Agent {
 public:
  /// The storage registration key Agent::register_storage uses.
  static constexpr const char* kRegistrationKey = "agent";

  /// InvalidArgument for an empty name or an unknown backend in the config; the
  /// backend's error if one cannot start.
  static Result<std::unique_ptr<Agent>> create(std::string name, AgentConfig config = {});
  virtual ~Agent() = default;

  /// The agent's name, as peers address it.
  virtual const std::string& name() const = 0;

  /// Adds a backend ("UCX"). AlreadyRegistered if present; NotFound for an unknown type.
  virtual Status create_backend(const std::string& type, const BackendParams& params = {}) = 0;
  /// The backends created so far.
  virtual std::vector<std::string> backends() const = 0;

  /// Registers every region with each backend that handles its memory type (or only
  /// with `backend`, when given). Regions must be non-empty and must not overlap regions
  /// registered already.
  virtual Result<std::unique_ptr<MemoryRegistration>> register_memory(
      const DescList& regions, const std::string& backend = {}) = 0;

  /// Registers a storage's whole region and hands the registration to the storage under
  /// kRegistrationKey; it is released with the storage or by storage.deregister(key). A
  /// Disk storage is unlinked once registered; an unlinked one is refused (InvalidArgument).
  virtual Status register_storage(RegisterableStorage& storage,
                                  const std::string& backend = {}) = 0;

  /// This agent's metadata: name, each backend's connection data, registered regions.
  virtual Result<std::string> local_metadata() const = 0;
  /// A part of this agent's metadata (NIXL's partial metadata): the registered regions that
  /// hold `regions`' descriptors and, with `with_connection`, the connection data; for a peer
  /// that loaded this agent before, so that one more region does not resend everything.
  /// OutOfBounds naming a descriptor no registered region holds; InvalidArgument for no
  /// regions and no connection data.
  virtual Result<std::string> local_partial_metadata(const DescList& regions,
                                                     bool with_connection) const = 0;
  /// Loads a peer's metadata (replacing older metadata of the same agent); returns its
  /// name. Partial metadata merges instead: its regions join the loaded peer's (replacing
  /// any they overlap; regions the peer deregistered stay until whole metadata is loaded),
  /// unless it carries other connection data or comes from another incarnation of the peer
  /// (a restart), when it replaces the peer as whole metadata does. InvalidArgument for
  /// bytes that do not decode, for our own name, and for regions alone of another
  /// incarnation; NotFound for regions alone of a peer not loaded.
  virtual Result<std::string> load_remote_metadata(std::string_view bytes) = 0;
  /// Forgets a peer: its connections and remote regions. NotFound if unknown.
  virtual Status invalidate_remote(const std::string& agent) = 0;
  /// Whether a peer's metadata is loaded.
  virtual bool has_remote(const std::string& agent) const = 0;
  /// Sets up the connection to a loaded peer now (NIXL's makeConnection; UCX: the
  /// endpoint's wireup), so that its first request does not pay for it. Optional: the
  /// first request connects otherwise. Blocks up to AgentConfig::peer_timeout. NotFound
  /// naming the peer if its metadata is not loaded; Remote naming it if it failed before or
  /// its connection fails; Timeout naming it if it does not answer in time (it is then
  /// marked failed, as a request's timeout does: load its metadata again to retry).
  virtual Status connect(const std::string& agent) = 0;

  /// Serves local_metadata() and the published items to peers over TCP on host:port
  /// (port 0: any free port) and returns the bound port. The listener stops with the
  /// agent. InvalidArgument if it listens already or for a bad host; Io if it cannot bind.
  virtual Result<uint16_t> listen(const std::string& host, uint16_t port) = 0;
  /// Fetches a peer's metadata from its listener and loads it; returns the peer's name.
  /// Timeout, Io (refused, reset), InvalidArgument (garbage, oversized).
  virtual Result<std::string> fetch_remote_metadata(
      const std::string& host, uint16_t port,
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) = 0;

  /// The longest key of a published item.
  static constexpr size_t kMaxPublishedKeyBytes = 256;
  /// Publishes `bytes` under `key` for peers to fetch from this agent's listener (with
  /// fetch_published), replacing an earlier item with that key. Items may be published
  /// before or after listen(); they live until unpublished or the agent is destroyed.
  /// InvalidArgument for an empty key, a key over kMaxPublishedKeyBytes, or bytes over
  /// AgentConfig::max_metadata_bytes.
  virtual Status publish(const std::string& key, std::string bytes) = 0;
  /// Withdraws a published item. NotFound if no item has that key.
  virtual Status unpublish(const std::string& key) = 0;
  /// Fetches the item a peer published under `key` from its listener at host:port.
  /// Remote (naming the key) if the peer has no such item; InvalidArgument for an empty
  /// or over-long key, or an item over AgentConfig::max_metadata_bytes; otherwise the
  /// errors of fetch_remote_metadata. Loads nothing: the bytes are the caller's.
  virtual Result<std::string> fetch_published(
      const std::string& host, uint16_t port, const std::string& key,
      std::chrono::milliseconds timeout = std::chrono::seconds(5)) = 0;

  // ---- etcd discovery (AgentConfig::etcd_endpoints) ----
  // Unsupported from each of these when the agent has no etcd endpoints; Io naming the
  // endpoints when etcd is unreachable (what is loaded keeps working meanwhile; what was
  // published is put again once etcd answers).

  /// Publishes this agent's metadata: its connection data under `<prefix>agents/<name>` and
  /// each registered region under `<prefix>regions/<name>/...` (call again after registering
  /// or deregistering memory: only what changed is written). With etcd, publish() also puts
  /// its items under `<prefix>items/<name>/<key>`. Errors: Unsupported without etcd
  /// endpoints; Io naming the endpoints when etcd is unreachable (what is published is put
  /// again once etcd answers).
  virtual Status publish_metadata() = 0;
  /// Removes what this agent published from etcd (also done when the agent is destroyed).
  virtual Status withdraw_metadata() = 0;
  /// Fetches agent `name`'s metadata from etcd and loads it; returns the name. NotFound
  /// when etcd has none. The agent then follows the peer: when its key is deleted or its
  /// lease expires (it died), the peer is invalidated; when it publishes new metadata (it
  /// restarted under the same name, before or after its old lease expired), that is loaded
  /// in its place, with its regions. It is followed until invalidate_remote(name). What
  /// etcd holds is the peer's connection data and one key per region; the agent loads their
  /// union, and a second fetch merges regions added since into the loaded peer.
  virtual Result<std::string> fetch_remote_metadata(const std::string& name) = 0;
  /// An item peer `name` published, from etcd. NotFound naming agent and key.
  virtual Result<std::string> fetch_published(const std::string& name, const std::string& key) = 0;

  /// Prepares a READ or WRITE between local and remote descriptors, validating first:
  /// equal counts and lengths, every local range inside a region registered here, every
  /// remote range inside a region of the peer's metadata, a known peer, and a memory-type
  /// pair some backend supports. `notification`, if set, reaches the peer after the data
  /// is complete and visible there.
  virtual Result<std::unique_ptr<Request>> create_request(
      Op op, const DescList& local, const DescList& remote, const std::string& remote_agent,
      std::optional<std::string> notification = std::nullopt) = 0;

  /// Sends a notification with no data. NotFound for an unknown agent.
  virtual Status gen_notif(const std::string& agent, std::string_view message) = 0;
  /// Returns and clears the notifications received, in order per sender.
  virtual std::vector<Notification> get_notifs() = 0;

  /// Drives communication once (only needed without a progress thread). With one, it
  /// also makes bytes that peers WROTE into this agent's memory visible to the calling
  /// thread, as does receiving the WRITE's notification.
  virtual void progress() = 0;

  // ---- prepared descriptor lists (NIXL's prepXferDlist + makeXferReq) ----
  /// Resolves `descs` once for many requests: against this agent's registered regions when
  /// `agent` is this agent's name (a local list, or the remote list of a transfer within
  /// this agent), else against the regions of peer `agent`'s loaded metadata. Errors as
  /// create_request's: InvalidArgument for no descriptors or one of length 0; NotFound
  /// for an unknown peer, Remote for a failed one; OutOfBounds naming the first descriptor
  /// that is not inside a registered region.
  virtual Result<std::shared_ptr<const PreparedDescs>> prepare_descs(const DescList& descs,
                                                                     const std::string& agent) = 0;
  /// create_request over prepared lists: moves local.descs()[local_indices[i]] to or from
  /// remote.descs()[remote_indices[i]] for every i, with the lookups done by prepare_descs.
  /// `local` must be a list of this agent's own memory; `remote` names the peer (or this
  /// agent). The request holds both lists while it exists. InvalidArgument for lists
  /// prepared by another agent, a local list of a peer's memory, no indices, unequal index
  /// counts or lengths; OutOfBounds naming an index past its list; NotRegistered when an index
  /// names a region deregistered since the list was prepared, Remote when the remote list's peer
  /// was invalidated, replaced by newer metadata or failed (prepare the list again); Unsupported as
  /// create_request.
  virtual Result<std::unique_ptr<Request>> create_request(
      Op op, const PreparedDescs& local, std::span<const uint32_t> local_indices,
      const PreparedDescs& remote, std::span<const uint32_t> remote_indices,
      std::optional<std::string> notification = std::nullopt) = 0;

 protected:
  Agent() = default;
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;
};

/// Descriptors of one agent's memory (or of a peer's, as loaded by this agent), resolved
/// once by Agent::prepare_descs for requests made by index.
/// Ownership: held by shared_ptr. A list keeps the registrations (or the peer metadata) its
/// descriptors lie in alive while it exists, as a request does; deregistering one of them
/// or replacing the peer's metadata makes the list stale (its requests fail: prepare it
/// again). A list that outlives its agent holds nothing and serves no request.
/// Thread safety: immutable; any number of threads may use one list at once.
class KVBM_API PreparedDescs {
 public:
  virtual ~PreparedDescs() = default;
  /// The agent whose memory the descriptors name: the preparing agent's own name for a
  /// local list, else the peer's.
  virtual const std::string& agent() const = 0;
  /// The descriptors, as prepared.
  virtual const DescList& descs() const = 0;
  /// How many descriptors.
  size_t size() const { return descs().size(); }

 private:
  // Only agents make lists (src/xfer/prepared_descs_impl.h), so an agent knows every list
  // it is given.
  friend class PreparedDescsImpl;
  PreparedDescs() = default;
  PreparedDescs(const PreparedDescs&) = delete;
  PreparedDescs& operator=(const PreparedDescs&) = delete;
};

}  // namespace kvbm::xfer
