#include "xfer/etcd_discovery.h"

#include <cstdlib>

#include "kvbm/log.h"

namespace kvbm::xfer::detail {

EtcdDiscoveryConfig etcd_config_from(std::vector<std::string> endpoints, std::string prefix,
                                     std::chrono::seconds ttl) {
  EtcdDiscoveryConfig c;
  if (endpoints.empty()) {
    if (const char* env = std::getenv("KVBM_ETCD_ENDPOINTS"); env != nullptr) {
      std::string list(env);
      size_t start = 0;
      while (start <= list.size()) {
        size_t comma = list.find(',', start);
        if (comma == std::string::npos) comma = list.size();
        if (comma > start) endpoints.push_back(list.substr(start, comma - start));
        start = comma + 1;
      }
    }
  }
  if (prefix.empty()) {
    const char* env = std::getenv("KVBM_ETCD_PREFIX");
    prefix = env != nullptr && *env != '\0' ? env : "kvbm/";
  }
  c.endpoints = std::move(endpoints);
  c.prefix = std::move(prefix);
  c.lease_ttl = ttl;
  return c;
}

Result<std::unique_ptr<EtcdDiscovery>> EtcdDiscovery::create(std::string agent,
                                                             EtcdDiscoveryConfig config,
                                                             Callbacks callbacks) {
  if (config.prefix.empty()) return err(ErrorCode::InvalidArgument, "etcd prefix is empty");
  if (config.lease_ttl < std::chrono::seconds(2)) {
    return err(ErrorCode::InvalidArgument, "etcd lease ttl of ", config.lease_ttl.count(),
               " s is under 2 s");
  }
  auto client = EtcdClient::create(config.endpoints, config.timeout);
  if (!client) return client.error();
  return std::unique_ptr<EtcdDiscovery>(new EtcdDiscovery(
      std::move(agent), std::move(config), std::move(callbacks), std::move(*client)));
}

EtcdDiscovery::EtcdDiscovery(std::string agent, EtcdDiscoveryConfig config, Callbacks callbacks,
                             std::unique_ptr<EtcdClient> client)
    : agent_(std::move(agent)),
      config_(std::move(config)),
      callbacks_(std::move(callbacks)),
      client_(std::move(client)) {
  keepalive_ = std::thread([this] { keepalive_loop(); });
}

EtcdDiscovery::~EtcdDiscovery() {
  stop();
}

void EtcdDiscovery::stop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (keepalive_.joinable()) keepalive_.join();
  std::unique_ptr<EtcdWatch> watch;
  {
    std::lock_guard<std::mutex> lock(follow_mu_);
    watch = std::move(watch_);
  }
  if (watch) watch->stop();
}

std::string EtcdDiscovery::metadata_key(const std::string& agent) const {
  return config_.prefix + "agents/" + agent;
}

std::string EtcdDiscovery::item_key(const std::string& agent, const std::string& key) const {
  return config_.prefix + "items/" + agent + "/" + key;
}

std::string EtcdDiscovery::region_key(const std::string& agent, const std::string& key) const {
  return config_.prefix + "regions/" + agent + "/" + key;
}

Status EtcdDiscovery::put_all_locked(int64_t lease) {
  // Regions before the metadata: a peer woken by the metadata's key finds them all.
  for (const auto& [key, bytes] : regions_)
    KVBM_TRY(client_->put(region_key(agent_, key), bytes, lease));
  if (metadata_) KVBM_TRY(client_->put(metadata_key(agent_), *metadata_, lease));
  for (const auto& [key, bytes] : items_)
    KVBM_TRY(client_->put(item_key(agent_, key), bytes, lease));
  return {};
}

Result<int64_t> EtcdDiscovery::lease_locked() {
  if (lease_ != 0) return lease_;
  auto lease = client_->grant_lease(config_.lease_ttl);
  if (!lease) return lease.error();
  lease_ = *lease;
  return lease_;
}

Status EtcdDiscovery::publish_metadata(const std::string& metadata) {
  std::lock_guard<std::mutex> lock(mu_);
  if (metadata_ == metadata && lease_ != 0 && !dirty_) return {};
  metadata_ = metadata;  // kept, so that the keepalive thread puts it once etcd answers
  auto lease = lease_locked();
  if (!lease) return lease.error();
  Status s = client_->put(metadata_key(agent_), metadata, *lease);
  dirty_ = !s;
  return s;
}

bool EtcdDiscovery::publishes_metadata() const {
  std::lock_guard<std::mutex> lock(mu_);
  return metadata_.has_value();
}

Status EtcdDiscovery::withdraw() {
  std::lock_guard<std::mutex> lock(mu_);
  metadata_.reset();
  items_.clear();
  regions_.clear();
  if (lease_ == 0) return {};
  // Revoking the lease deletes every key attached to it, in one step.
  const int64_t lease = std::exchange(lease_, 0);
  Status s = client_->revoke_lease(lease);
  if (!s && s.code() == ErrorCode::InvalidArgument) return {};  // it had expired already
  return s;
}

Status EtcdDiscovery::publish_item(const std::string& key, const std::string& bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  items_[key] = bytes;
  auto lease = lease_locked();
  if (!lease) return lease.error();
  Status s = client_->put(item_key(agent_, key), bytes, *lease);
  dirty_ = dirty_ || !s;
  return s;
}

Status EtcdDiscovery::publish_region(const std::string& key, const std::string& bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  regions_[key] = bytes;
  auto lease = lease_locked();
  if (!lease) return lease.error();
  Status s = client_->put(region_key(agent_, key), bytes, *lease);
  dirty_ = dirty_ || !s;
  return s;
}

Status EtcdDiscovery::unpublish_region(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  regions_.erase(key);
  auto deleted = client_->del(region_key(agent_, key));
  if (!deleted) return deleted.error();
  return {};
}

Status EtcdDiscovery::unpublish_item(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  items_.erase(key);
  auto deleted = client_->del(item_key(agent_, key));
  if (!deleted) return deleted.error();
  return {};
}

Result<EtcdDiscovery::PeerMetadata> EtcdDiscovery::fetch_metadata(const std::string& agent) {
  KVBM_TRY(ensure_watch());  // before the read, so no change after it is missed
  auto value = client_->get(metadata_key(agent));
  if (!value) return value.error();
  if (!value->has_value()) {
    return err(ErrorCode::NotFound, "no agent '", agent, "' in etcd (key '", metadata_key(agent),
               "' at ", client_->endpoints().front(), ")");
  }
  // Read after the metadata: a restarted peer puts its regions first.
  auto regions = client_->get_prefix(region_key(agent, ""));
  if (!regions) return regions.error();
  {
    std::lock_guard<std::mutex> lock(follow_mu_);
    followed_.try_emplace(agent);
  }
  PeerMetadata out;
  out.metadata = std::move(**value);
  for (auto& kv : *regions) out.regions.emplace_back(std::move(kv.key), std::move(kv.value));
  return out;
}

Result<std::string> EtcdDiscovery::fetch_item(const std::string& agent, const std::string& key) {
  auto value = client_->get(item_key(agent, key));
  if (!value) return value.error();
  if (!value->has_value()) {
    return err(ErrorCode::NotFound, "agent '", agent, "' published no item '", key, "' in etcd");
  }
  return std::move(**value);
}

void EtcdDiscovery::loaded(const std::string& agent, const std::string& metadata) {
  std::lock_guard<std::mutex> lock(follow_mu_);
  followed_[agent] = metadata;
}

void EtcdDiscovery::forget(const std::string& agent) {
  std::lock_guard<std::mutex> lock(follow_mu_);
  followed_.erase(agent);
}

Status EtcdDiscovery::ensure_watch() {
  std::lock_guard<std::mutex> lock(follow_mu_);
  if (watch_) return {};
  auto watch = EtcdWatch::start(
      *client_, config_.prefix + "agents/", [this](const EtcdEvent& e) { on_event(e); },
      [this](const Error& e) {
        log(LogLevel::Warn, "agent '" + agent_ + "': etcd watch: " + e.message);
      });
  if (!watch) return watch.error();
  watch_ = std::move(*watch);
  return {};
}

void EtcdDiscovery::on_event(const EtcdEvent& event) {
  const std::string agents = config_.prefix + "agents/";
  if (event.key.size() <= agents.size()) return;
  const std::string agent = event.key.substr(agents.size());
  if (agent == agent_) return;
  {
    std::lock_guard<std::mutex> lock(follow_mu_);
    auto it = followed_.find(agent);
    if (it == followed_.end()) return;
    if (event.type == EtcdEvent::Type::Delete) {
      // Still followed: its restart under the same name is loaded when it publishes.
      it->second.clear();
    } else {
      if (it->second == event.value) return;  // re-put after a lease renewal: nothing new
      it->second = event.value;
    }
  }
  if (event.type == EtcdEvent::Type::Delete) {
    if (callbacks_.peer_gone) callbacks_.peer_gone(agent);
  } else if (callbacks_.peer_updated) {
    callbacks_.peer_updated(agent, event.value);
  }
}

void EtcdDiscovery::keepalive_loop() {
  const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(config_.lease_ttl) / 3;
  bool warned = false;
  std::unique_lock<std::mutex> stop_lock(stop_mu_);
  while (!stop_cv_.wait_for(stop_lock, period, [this] { return stopping_; })) {
    stop_lock.unlock();
    Status s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (lease_ != 0) s = client_->keep_alive(lease_);
      const bool expired = lease_ != 0 && !s && s.code() == ErrorCode::NotFound;
      const bool unpublished = lease_ == 0 && (metadata_ || !items_.empty());
      if (expired || unpublished || dirty_) {
        // The lease expired while etcd was away, or publishing found etcd down: a new
        // lease, and everything put again.
        if (expired) lease_ = 0;
        auto lease = lease_locked();
        s = lease ? put_all_locked(*lease) : Status(lease.error());
        dirty_ = !s;
        if (s) log(LogLevel::Info, "agent '" + agent_ + "': published to etcd again");
      }
    }
    if (!s && !warned) {
      log(LogLevel::Warn, "agent '" + agent_ + "': etcd keepalive: " + s.error().message);
    }
    warned = !s;
    stop_lock.lock();
  }
}

}  // namespace kvbm::xfer::detail
