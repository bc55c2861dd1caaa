// The Agent's etcd discovery calls (AgentImpl, agent_impl.h); the etcd side is
// xfer/etcd_discovery.h.
#include "kvbm/log.h"
#include "xfer/agent_impl.h"

namespace kvbm::xfer::detail {

Status AgentImpl::start_discovery() {
  auto config =
      etcd_config_from(config_.etcd_endpoints, config_.etcd_prefix, config_.etcd_lease_ttl);
  if (config.endpoints.empty()) return {};
  EtcdDiscovery::Callbacks callbacks;
  // A followed peer left etcd (withdrew, or its lease expired when it died).
  callbacks.peer_gone = [this](const std::string& agent) {
    if (invalidate_remote(agent)) {
      log(LogLevel::Info, "agent '" + name_ + "': peer '" + agent + "' left etcd: invalidated");
    }
  };
  // A followed peer published new metadata (it restarted under the same name).
  callbacks.peer_updated = [this](const std::string& agent, const std::string& metadata) {
    auto loaded = load_remote_metadata(metadata);
    if (!loaded || *loaded != agent) {
      log(LogLevel::Warn, "agent '" + name_ + "': new metadata of peer '" + agent +
                              "' from etcd not loaded: " +
                              (loaded ? "it names '" + *loaded + "'" : loaded.error().message));
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

Status AgentImpl::publish_metadata() {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why;
  auto md = local_metadata();
  if (!md) return md.error();
  return d->publish_metadata(*md);
}

Status AgentImpl::withdraw_metadata() {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why;
  return d->withdraw();
}

Result<std::string> AgentImpl::fetch_remote_metadata(const std::string& name) {
  Status why;
  EtcdDiscovery* d = discovery_or_error(&why);
  if (d == nullptr) return why.error();
  auto bytes = d->fetch_metadata(name);
  if (!bytes) return bytes.error();
  auto loaded = load_remote_metadata(*bytes);
  if (!loaded) return loaded.error();
  if (*loaded != name) {
    return err(ErrorCode::InvalidArgument, "etcd key '", d->metadata_key(name),
               "' holds the metadata of agent '", *loaded, "'");
  }
  d->loaded(name, *bytes);
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
