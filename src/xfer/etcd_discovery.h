// An agent's discovery through etcd: what the agent publishes lives under
// <prefix>agents/<name> (its connection data: partial metadata without regions),
// <prefix>regions/<name>/<region> (one key per registered region: partial metadata of that
// region, so that one more region writes one more key) and <prefix>items/<name>/<key>,
// attached to a lease the agent keeps alive; peers fetch them by name and watch the first.
//
// - Publishing keeps a lease of `ttl`, refreshed every ttl/3 by a thread. When etcd was
//   unreachable for longer than the ttl, the lease is gone: on its return, a new lease is
//   granted and everything published is put again.
// - Fetching a peer's metadata also follows the peer: the watch (started with the first
//   fetch) reports a followed peer whose key is deleted or whose lease expired (gone), and a
//   followed peer's new metadata (a restart under the same name, also after it was gone).
//   A peer is followed until forget().
// - etcd unreachable: new fetches fail with Io naming the endpoints; what is loaded keeps
//   working; the watch and the lease recover when etcd returns.
//
// Thread safety: every call may be made from many threads. The callbacks run on the watch
// thread, never under a lock of this class; stop() (or the destructor) returns only when no
// callback runs any more.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvbm/result.h"
#include "xfer/etcd_client.h"

namespace kvbm::xfer::detail {

struct EtcdDiscoveryConfig {
  std::vector<std::string> endpoints;
  std::string prefix = "kvbm/";
  std::chrono::seconds lease_ttl{10};
  std::chrono::milliseconds timeout{2000};  // one etcd request
};

class EtcdDiscovery {
 public:
  struct Callbacks {
    std::function<void(const std::string& agent)> peer_gone;
    std::function<void(const std::string& agent, const std::string& metadata)> peer_updated;
  };

  // InvalidArgument for a bad endpoint, an empty prefix or a ttl under 2 s. Connects to
  // nothing yet, so an agent starts while etcd is down.
  static Result<std::unique_ptr<EtcdDiscovery>> create(std::string agent,
                                                       EtcdDiscoveryConfig config,
                                                       Callbacks callbacks);
  ~EtcdDiscovery();
  void stop();

  // Puts this agent's metadata (replacing what was there) under the lease; nothing when it
  // is what was put last.
  Status publish_metadata(const std::string& metadata);
  // Whether publish_metadata was called since the last withdraw().
  bool publishes_metadata() const;
  // Puts (or deletes) one region's partial metadata under <prefix>regions/<name>/<key>.
  Status publish_region(const std::string& key, const std::string& bytes);
  Status unpublish_region(const std::string& key);
  // Deletes everything this agent published and revokes the lease.
  Status withdraw();
  Status publish_item(const std::string& key, const std::string& bytes);
  Status unpublish_item(const std::string& key);

  // A peer's metadata and its regions' (whatever is under its regions key, unchecked);
  // NotFound when etcd has no metadata under its name. Follows the peer.
  struct PeerMetadata {
    std::string metadata;
    std::vector<std::pair<std::string, std::string>> regions;  // etcd key, value
  };
  Result<PeerMetadata> fetch_metadata(const std::string& agent);
  // A peer's published item; NotFound naming agent and key when there is none.
  Result<std::string> fetch_item(const std::string& agent, const std::string& key);
  // Remembers the metadata loaded for a followed peer (so an unchanged re-put is no
  // update), and stops following one.
  void loaded(const std::string& agent, const std::string& metadata);
  void forget(const std::string& agent);

  std::string metadata_key(const std::string& agent) const;
  std::string item_key(const std::string& agent, const std::string& key) const;
  std::string region_key(const std::string& agent, const std::string& key) const;

 private:
  EtcdDiscovery(std::string agent, EtcdDiscoveryConfig config, Callbacks callbacks,
                std::unique_ptr<EtcdClient> client);
  Result<int64_t> lease_locked();  // the lease, granted (and everything put) if needed
  Status put_all_locked(int64_t lease);
  void keepalive_loop();
  Status ensure_watch();
  void on_event(const EtcdEvent& event);

  const std::string agent_;
  const EtcdDiscoveryConfig config_;
  const Callbacks callbacks_;
  std::unique_ptr<EtcdClient> client_;

  mutable std::mutex mu_;  // what we publish, the lease
  std::optional<std::string> metadata_;
  std::map<std::string, std::string> items_;
  std::map<std::string, std::string> regions_;
  int64_t lease_ = 0;
  bool dirty_ = false;  // a put failed: the keepalive thread puts everything again

  std::mutex follow_mu_;                         // peers we follow, the watch
  std::map<std::string, std::string> followed_;  // agent -> the metadata loaded last
  std::unique_ptr<EtcdWatch> watch_;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread keepalive_;
};

// The config from AgentConfig fields, with KVBM_ETCD_ENDPOINTS (comma-separated) and
// KVBM_ETCD_PREFIX taking their place when those are empty. No endpoints: no discovery.
EtcdDiscoveryConfig etcd_config_from(std::vector<std::string> endpoints, std::string prefix,
                                     std::chrono::seconds ttl);

}  // namespace kvbm::xfer::detail
