// The Agent implementation: registered regions, known peers, request validation and
// backend choice, notifications, the progress thread and the metadata side channel.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "xfer/backend.h"
#include "xfer/etcd_discovery.h"
#include "xfer/metadata.h"
#include "xfer/side_channel.h"

namespace kvbm::xfer {
class PreparedDescsImpl;  // prepared_descs_impl.h
}

namespace kvbm::xfer::detail {

// Regions are kept sorted by (type, device id, start address) so that the region that
// holds a range is found with one ordered lookup.
using RegionKey = std::tuple<MemType, uint64_t, uint64_t>;

template <typename Handle>
struct BackendHandles {
  std::vector<std::pair<Backend*, std::shared_ptr<Handle>>> items;
  Handle* find(const Backend* b) const {
    for (const auto& [backend, h] : items) {
      if (backend == b) return h.get();
    }
    return nullptr;
  }
};

struct LocalRegionEntry {
  MemType type;
  Desc desc;
  BackendHandles<LocalRegion> regions;    // one per backend it is registered with
  BackendHandles<RemoteRegion> loopback;  // the same memory as a peer of ourselves sees it
  // Set (under the agent's mu_) when deregistered: prepared lists holding it are stale.
  std::atomic<bool> deregistered{false};
};

struct RemoteRegionEntry {
  MemType type;
  Desc desc;
  BackendHandles<RemoteRegion> regions;
};

class RequestImpl;
struct PreparedRegistry;

struct RemotePeer {
  std::string name;
  std::map<std::string, std::string> connection;  // backend -> the connection data loaded
  uint64_t incarnation = 0;
  std::vector<Backend*> connected;
  std::map<RegionKey, std::shared_ptr<RemoteRegionEntry>> regions;
  // Set when the peer is invalidated, replaced by newer metadata, or timed out.
  std::atomic<bool> gone{false};
  std::mutex failure_mu;
  std::optional<Error> failure;
  std::atomic<bool> failed{false};  // failure is set: lets post() skip the lock while healthy
};

// Checks of a request's descriptor pairs that need no lookup (agent.cc): InvalidArgument
// for no descriptors, unequal counts, unequal lengths or length 0 of descriptor `i`.
Status check_counts(size_t local, size_t remote);
Status check_lengths(size_t i, uint64_t local_len, uint64_t remote_len);
// "addr 0x1000 len 64 dev 0", for error messages.
std::string describe(const Desc& d);

class AgentImpl final : public Agent {
 public:
  AgentImpl(std::string name, AgentConfig config);
  ~AgentImpl() override;
  Status start();

  const std::string& name() const override { return name_; }
  Status create_backend(const std::string& type, const BackendParams& params) override;
  std::vector<std::string> backends() const override;

  Result<std::unique_ptr<MemoryRegistration>> register_memory(const DescList& regions,
                                                              const std::string& backend) override;
  Status register_storage(RegisterableStorage& storage, const std::string& backend) override;

  Result<std::string> local_metadata() const override;
  Result<std::string> local_partial_metadata(const DescList& regions,
                                             bool with_connection) const override;
  Result<std::string> load_remote_metadata(std::string_view bytes) override;
  Status invalidate_remote(const std::string& agent) override;
  bool has_remote(const std::string& agent) const override;
  Status connect(const std::string& agent) override;
  // invalidate_remote without forgetting the peer in etcd (it left etcd, and may return).
  Status drop_remote(const std::string& agent);

  Result<uint16_t> listen(const std::string& host, uint16_t port) override;
  Result<std::string> fetch_remote_metadata(const std::string& host, uint16_t port,
                                            std::chrono::milliseconds timeout) override;
  Status publish(const std::string& key, std::string bytes) override;
  Status unpublish(const std::string& key) override;
  Result<std::string> fetch_published(const std::string& host, uint16_t port,
                                      const std::string& key,
                                      std::chrono::milliseconds timeout) override;

  Status publish_metadata() override;
  Status withdraw_metadata() override;
  Result<std::string> fetch_remote_metadata(const std::string& name) override;
  Result<std::string> fetch_published(const std::string& name, const std::string& key) override;

  Result<std::unique_ptr<Request>> create_request(Op op, const DescList& local,
                                                  const DescList& remote,
                                                  const std::string& remote_agent,
                                                  std::optional<std::string> notification) override;

  Status gen_notif(const std::string& agent, std::string_view message) override;
  std::vector<Notification> get_notifs() override;
  void progress() override;

  // What the side channel serves under `key`: the metadata (empty key) or an item.
  // Called on the side channel's thread only.
  Result<Blob> serve(const std::string& key);

  // For requests and registrations.
  const AgentConfig& config() const { return config_; }
  bool has_progress_thread() const { return config_.progress_thread; }
  void deregister(const std::vector<RegionKey>& keys);
  void peer_timed_out(const std::shared_ptr<RemotePeer>& peer, Backend* backend, const Error& why);
  // A backend's connection data changed (Backend::peer_failed): metadata published to etcd
  // is published again, so that peers following it there load it anew.
  void connection_changed();
  // The requests alive now: the agent's destructor ends them (cancels, or waits for what
  // cannot be cancelled) before its backends go, so a request may outlive its agent.
  void track(RequestImpl* request);
  void forget(RequestImpl* request);
  // Blocks until some backend completes something or `until` passes.
  void wait_for_progress(std::chrono::steady_clock::time_point until);

 private:
  static constexpr size_t kMaxBackends = 8;
  size_t backend_count() const { return backend_count_.load(std::memory_order_acquire); }
  Backend* backend_named(const std::string& name) const;
  BackendEnv make_env();
  void progress_loop();
  // Loads decoded metadata: a whole one replaces the peer; a partial one merges (metadata.h).
  Result<std::string> load_metadata(AgentMetadata md);
  Result<std::shared_ptr<RemotePeer>> connect_peer(const AgentMetadata& md);
  Result<std::shared_ptr<RemoteRegionEntry>> load_region(const RemotePeer& peer,
                                                         const RegionMetadata& r, size_t index);
  // This agent's metadata, whole (regions null) or the parts asked for.
  AgentMetadata metadata_of(const std::vector<RegionKey>* regions, bool with_connection) const;
  void notify_progress();
  void add_notification(Notification n);

  const std::string name_;
  const AgentConfig config_;
  const uint64_t incarnation_;  // random, nonzero: tells a restart under the same name

  // Backends are only ever added, so the progress thread reads them without the lock.
  std::array<std::unique_ptr<Backend>, kMaxBackends> backends_;
  std::atomic<size_t> backend_count_{0};
  std::mutex backend_create_mu_;

  mutable std::mutex mu_;  // local_, remotes_
  std::map<RegionKey, std::shared_ptr<LocalRegionEntry>> local_;
  std::map<std::string, std::shared_ptr<RemotePeer>> remotes_;
  std::mutex load_mu_;  // serializes metadata loads (connect + region import)

  std::mutex notif_mu_;
  std::vector<Notification> notifs_;

  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  std::atomic<int> waiters_{0};
  uint64_t progress_events_ = 0;

  std::atomic<bool> stop_{false};
  std::thread progress_thread_;

  mutable std::mutex published_mu_;
  // Shared, so that serving one copies it outside the lock.
  std::map<std::string, std::shared_ptr<const std::string>> published_;

  Status start_discovery();
  std::mutex etcd_publish_mu_;                       // publish_metadata, withdraw_metadata
  std::map<std::string, std::string> etcd_regions_;  // region key -> what etcd holds
  EtcdDiscovery* discovery_or_error(Status* why) const;
  // etcd discovery; null without endpoints. Stopped first in the destructor, so its
  // callbacks (which load and invalidate peers) never run on a half-destroyed agent.
  std::unique_ptr<EtcdDiscovery> discovery_;

  std::mutex listen_mu_;
  std::unique_ptr<SideChannelServer> side_channel_;
  Blob served_metadata_;  // the metadata last served (side channel thread only)

  std::mutex requests_mu_;
  std::set<RequestImpl*> requests_;

  // Registrations hold a weak reference, so that one outliving the agent fails cleanly.
  std::shared_ptr<AgentImpl*> alive_;

 public:
  // ---- prepared descriptor lists (agent_prepared.cc) ----
  Result<std::shared_ptr<const PreparedDescs>> prepare_descs(const DescList& descs,
                                                             const std::string& agent) override;
  Result<std::unique_ptr<Request>> create_request(Op op, const PreparedDescs& local,
                                                  std::span<const uint32_t> local_indices,
                                                  const PreparedDescs& remote,
                                                  std::span<const uint32_t> remote_indices,
                                                  std::optional<std::string> notification) override;

 private:
  // ---- making a request: the steps both create_request paths share (agent.cc) ----
  // The peer named `agent`, known and not failed (mu_ held): NotFound, Remote.
  Result<std::shared_ptr<RemotePeer>> find_peer_locked(const std::string& agent) const;
  // The registered region holding `d` (mu_ held); OutOfBounds naming `what` and `i`
  // ("local descriptor ", 3) otherwise.
  Result<const std::shared_ptr<LocalRegionEntry>*> find_local_locked(const char* what, size_t i,
                                                                     MemType type,
                                                                     const Desc& d) const;
  Result<const RemoteRegionEntry*> find_remote_locked(const char* what, size_t i,
                                                      const RemotePeer& peer, MemType type,
                                                      const Desc& d) const;
  // The first backend that moves `local` <-> `remote` and that covers(slot, backend).
  template <typename Covers>
  Backend* first_backend(MemType local, MemType remote, Covers&& covers) const {
    for (size_t b = 0; b < backend_count(); ++b) {
      Backend* cand = backends_[b].get();
      if (cand->supports(local, remote) && covers(b, cand)) return cand;
    }
    return nullptr;
  }
  Error no_backend(MemType local, MemType remote, const std::string& remote_agent) const;
  // The backend that delivers a notification `chosen` cannot send (null when it can).
  Result<Backend*> choose_notifier(Backend* chosen, const RemotePeer* peer,
                                   const std::string& remote_agent) const;
  // Hands validated segments to `chosen` and wraps what it prepared in a RequestImpl.
  Result<std::unique_ptr<Request>> finish_request(Op op, Backend* chosen, Backend* notifier,
                                                  std::shared_ptr<RemotePeer> peer,
                                                  const std::string& remote_agent,
                                                  std::vector<Segment> segments,
                                                  std::vector<std::shared_ptr<void>> keep,
                                                  std::optional<std::string> notification);
  // The list behind `list` if this agent prepared it; InvalidArgument naming `role`.
  Result<const PreparedDescsImpl*> own_list(const PreparedDescs& list, const char* role) const;
  // Releases what the lists still hold, before the backends go (the destructor).
  void close_prepared();
  // The lists this agent made; shared with them, so that a list may outlive the agent.
  std::shared_ptr<PreparedRegistry> prepared_;
};

}  // namespace kvbm::xfer::detail
