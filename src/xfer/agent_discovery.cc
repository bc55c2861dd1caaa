// The Agent's etcd discovery calls (AgentImpl, agent_impl.h); the etcd side is
// xfer/etcd_discovery.h.
#include "common/hex.h"
#include "kvbm/log.h"
#include "kvbm/xfer/mem_type.h"
#include "xfer/agent_impl.h"

namespace kvbm::xfer::detail {

Status AgentImpl::start_discovery() {
  auto config =
      etcd_config_from(config_.etcd_endpoints, config_.etcd_prefix, config_.etcd_lease_ttl);
  if (config.endpoints.empty()) return {};
  EtcdDiscovery::Callbacks callbacks;
  // A followed peer left etcd (withdrew, or its lease expired when it died).
  callbacks.peer_gone = [this](const std::string& agent) {
    if (drop_remote(agent)) {
      log(LogLevel::Info, "agent '" + name_ + "': peer '" + agent + "' left etcd: invalidated");
    }
  };
  // A followed peer published new metadata (it restarted under the same name): fetched
  // again with its regions.
  callbacks.peer_updated = [this](const std::string& agent, const std::string&) {
    auto loaded = fetch_remote_metadata(agent);
    if (!loaded) {
      log(LogLevel::Warn, "agent '" + name_ + "': new metadata of peer '" + agent +
                              "' from etcd not loaded: " + loaded.error().message);
    }
  };
  auto discovery = EtcdDiscovery::create(name_, std::move(config), std::move(callbacks));
  if (!discovery) return discovery.error();
  discovery_ = std::move(*discovery);
  return {};
}

EtcdDiscovery* AgentImpl::discovery_or_error(Status* why) const {
  if (!discovery_) {
    *why = err(ErrorCode::Unsupported, "agent '", name_,
               "' has no etcd endpoints (AgentConfig::etcd_endpoints or KVBM_ETCD_ENDPOINTS)");
  }
  return discovery_.get();
}

// One etcd key per region, so that registering one more writes one more key: only the
// regions whose partial metadata changed since the last call are put (or deleted), then
// the connection data, which etcd gets only when it changed.
Status AgentImpl::publish_metadata() {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why;
  std::lock_guard<std::mutex> publishing(etcd_publish_mu_);
  std::vector<RegionKey> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, entry] : local_) keys.push_back(key);
  }
  std::map<std::string, std::string> now;
  for (const RegionKey& k : keys) {
    const auto& [type, dev, addr] = k;
    const std::vector<RegionKey> one{k};
    now[std::string(to_string(type)) + "-" + std::to_string(dev) + "-" + kvbm::detail::hex(addr)] =
        encode_metadata(metadata_of(&one, false), config_.auth_key);
  }
  for (auto it = etcd_regions_.begin(); it != etcd_regions_.end();) {
    if (now.count(it->first) != 0) {
      ++it;
      continue;
    }
    KVBM_TRY(d->unpublish_region(it->first));
    it = etcd_regions_.erase(it);
  }
  for (auto& [key, bytes] : now) {
    auto it = etcd_regions_.find(key);
    if (it != etcd_regions_.end() && it->second == bytes) continue;
    KVBM_TRY(d->publish_region(key, bytes));
    etcd_regions_[key] = std::move(bytes);
  }
  const std::vector<RegionKey> none;
  return d->publish_metadata(encode_metadata(metadata_of(&none, true), config_.auth_key));
}

Status AgentImpl::withdraw_metadata() {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why;
  std::lock_guard<std::mutex> publishing(etcd_publish_mu_);
  etcd_regions_.clear();
  return d->withdraw();
}

Result<std::string> AgentImpl::fetch_remote_metadata(const std::string& name) {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why.error();
  auto parts = d->fetch_metadata(name);
  if (!parts) return parts.error();
  auto md = decode_metadata(parts->metadata, config_.max_metadata_bytes, config_.auth_key);
  if (!md) {
    return err(md.code(), "etcd key '", d->metadata_key(name), "': ", md.error().message);
  }
  if (md->name != name) {
    return err(ErrorCode::InvalidArgument, "etcd key '", d->metadata_key(name),
               "' holds the metadata of agent '", md->name, "'");
  }
  if (md->partial) {
    // The union of its regions' keys. Keys of another agent (whose name extends this one's)
    // or of a previous incarnation (a peer that died before its lease expired) are skipped.
    for (const auto& [key, bytes] : parts->regions) {
      auto r = decode_metadata(bytes, config_.max_metadata_bytes, config_.auth_key);
      if (!r) return err(r.code(), "etcd key '", key, "': ", r.error().message);
      if (r->name != name || r->incarnation != md->incarnation) continue;
      for (auto& region : r->regions) md->regions.push_back(std::move(region));
    }
  }
  // Partial with its connection data: merges into the same incarnation, else replaces it.
  auto loaded = load_metadata(std::move(*md));
  if (!loaded) return loaded.error();
  d->loaded(name, parts->metadata);
  return loaded;
}

Result<std::string> AgentImpl::fetch_published(const std::string& name, const std::string& key) {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why.error();
  if (key.empty() || key.size() > kMaxPublishedKeyBytes) {
    return err(ErrorCode::InvalidArgument, "item key of ", key.size(), " bytes (1..",
               kMaxPublishedKeyBytes, ")");
  }
  auto item = d->fetch_item(name, key);
  if (item && item->size() > config_.max_metadata_bytes) {
    return err(ErrorCode::InvalidArgument, "item '", key, "' of agent '", name,
               "' from etcd: ", item->size(), " bytes exceeds max_metadata_bytes ",
               config_.max_metadata_bytes);
  }
  return item;
}

}  // namespace kvbm::xfer::detail
