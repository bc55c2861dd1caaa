#include <algorithm>
#include <cstdio>
#include <random>
#include <utility>

#include "common/hex.h"
#include "kvbm/cuda.h"
#include "kvbm/log.h"
#include "kvbm/storage/disk.h"
#include "kvbm/xfer/mem_type.h"
#include "xfer/agent_impl.h"
#include "xfer/auth.h"
#include "xfer/memory_registration_impl.h"
#include "xfer/metadata.h"
#include "xfer/prepared_descs_impl.h"
#include "xfer/request_impl.h"

namespace kvbm::xfer {

Result<std::unique_ptr<Agent>> Agent::create(std::string name, AgentConfig config) {
  if (name.empty()) return err(ErrorCode::InvalidArgument, "agent name must not be empty");
  if (name.size() > 256) {
    return err(ErrorCode::InvalidArgument, "agent name of ", name.size(), " bytes exceeds 256");
  }
  if (config.peer_timeout.count() <= 0) {
    return err(ErrorCode::InvalidArgument, "peer_timeout must be > 0 ms, got ",
               config.peer_timeout.count());
  }
  auto key = detail::resolve_auth_key(config.auth_key);
  if (!key) return key.error();
  config.auth_key = std::move(*key);
  auto agent = std::make_unique<detail::AgentImpl>(std::move(name), std::move(config));
  KVBM_TRY(agent->start());
  return std::unique_ptr<Agent>(std::move(agent));
}

namespace detail {

std::string describe(const Desc& d) {
  return "addr " + kvbm::detail::hex(d.addr) + " len " + std::to_string(d.len) + " dev " +
         std::to_string(d.dev_id);
}

namespace {

bool contains(const Desc& region, const Desc& d) {
  return d.addr >= region.addr && d.len <= region.len && d.addr - region.addr <= region.len - d.len;
}

// The entry of `map` whose region holds all of `d`, or nullptr.
template <typename Entry>
const std::shared_ptr<Entry>* find_region(const std::map<RegionKey, std::shared_ptr<Entry>>& map,
                                          MemType type, const Desc& d) {
  auto it = map.upper_bound(RegionKey{type, d.dev_id, d.addr});
  if (it == map.begin()) return nullptr;
  --it;
  const auto& [t, dev, addr] = it->first;
  if (t != type || dev != d.dev_id || !contains(it->second->desc, d)) return nullptr;
  return &it->second;
}

template <typename Entry>
bool overlaps_any(const std::map<RegionKey, std::shared_ptr<Entry>>& map, MemType type,
                  const Desc& d) {
  auto it = map.lower_bound(RegionKey{type, d.dev_id, d.addr});
  if (it != map.end()) {
    const auto& [t, dev, addr] = it->first;
    if (t == type && dev == d.dev_id && addr < d.addr + d.len) return true;
  }
  if (it != map.begin()) {
    --it;
    const auto& [t, dev, addr] = it->first;
    if (t == type && dev == d.dev_id && it->second->desc.addr + it->second->desc.len > d.addr) {
      return true;
    }
  }
  return false;
}

uint64_t random_incarnation() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  return v != 0 ? v : 1;
}

}  // namespace

AgentImpl::AgentImpl(std::string name, AgentConfig config)
    : name_(std::move(name)),
      config_(std::move(config)),
      incarnation_(random_incarnation()),
      alive_(std::make_shared<AgentImpl*>(this)),
      prepared_(std::make_shared<PreparedRegistry>()) {}

Status AgentImpl::start() {
  for (const auto& type : config_.backends) KVBM_TRY(create_backend(type, {}));
  const auto known = known_backends();
  if (config_.add_cuda_if_gpu && backend_named("CUDA") == nullptr &&
      std::find(known.begin(), known.end(), "CUDA") != known.end() && cuda_device_count().ok()) {
    if (auto st = create_backend("CUDA", {}); !st) {
      log(LogLevel::Warn, "agent '" + name_ + "': no CUDA backend: " + st.error().to_string());
    }
  }
  if (config_.progress_thread) progress_thread_ = std::thread([this] { progress_loop(); });
  return start_discovery();
}

AgentImpl::~AgentImpl() {
  if (discovery_) {
    // Peers see this agent leave at once, rather than when its lease expires.
    if (auto st = discovery_->withdraw(); !st) {
      log(LogLevel::Warn, "agent '" + name_ + "': withdrawing from etcd: " + st.error().message);
    }
    discovery_->stop();
  }
  alive_.reset();
  {
    std::lock_guard<std::mutex> lock(listen_mu_);
    side_channel_.reset();
  }
  {
    // Requests still alive end first: one in flight still moves bytes between regions
    // that the backends below release (UCX's registration cache aborts on that).
    std::lock_guard<std::mutex> lock(requests_mu_);
    for (RequestImpl* r : requests_) r->detach("agent '" + name_ + "' was destroyed");
    requests_.clear();
  }
  close_prepared();
  stop_ = true;
  if (progress_thread_.joinable()) progress_thread_.join();
  // Peers and regions go before the backends that made them.
  std::map<std::string, std::shared_ptr<RemotePeer>> remotes;
  std::map<RegionKey, std::shared_ptr<LocalRegionEntry>> local;
  {
    std::lock_guard<std::mutex> lock(mu_);
    remotes.swap(remotes_);
    local.swap(local_);
  }
  for (auto& [name, peer] : remotes) {
    peer->gone = true;
    for (Backend* b : peer->connected) b->disconnect(name);
  }
  remotes.clear();
  local.clear();
  for (size_t i = backend_count(); i-- > 0;) backends_[i].reset();
}

BackendEnv AgentImpl::make_env() {
  BackendEnv env;
  env.agent_name = name_;
  env.peer_timeout = config_.peer_timeout;
  env.on_notification = [this](Notification n) { add_notification(std::move(n)); };
  env.on_completion = [this] { notify_progress(); };
  env.has_waiters = [this] { return waiters_.load(std::memory_order_acquire) > 0; };
  env.on_connection_changed = [this] { connection_changed(); };
  return env;
}

Status AgentImpl::create_backend(const std::string& type, const BackendParams& params) {
  std::lock_guard<std::mutex> lock(backend_create_mu_);
  if (backend_named(type) != nullptr) {
    return err(ErrorCode::AlreadyRegistered, "agent '", name_, "' already has backend '", type,
               "'");
  }
  const size_t n = backend_count();
  if (n == kMaxBackends) {
    return err(ErrorCode::InvalidArgument, "agent '", name_, "' has the maximum of ", kMaxBackends,
               " backends");
  }
  auto backend = make_backend(type, make_env(), params);
  if (!backend) return backend.error();
  // A backend that can reach its own agent serves transfers whose peer is this agent.
  if (auto st = (*backend)->connect(name_, (*backend)->connection_info()); !st) {
    log(LogLevel::Debug, "backend " + type + " has no loopback: " + st.error().to_string());
  }
  backends_[n] = std::move(*backend);
  backend_count_.store(n + 1, std::memory_order_release);
  return {};
}

std::vector<std::string> AgentImpl::backends() const {
  std::vector<std::string> names;
  for (size_t i = 0; i < backend_count(); ++i) names.push_back(backends_[i]->name());
  return names;
}

Backend* AgentImpl::backend_named(const std::string& name) const {
  for (size_t i = 0; i < backend_count(); ++i) {
    if (backends_[i]->name() == name) return backends_[i].get();
  }
  return nullptr;
}

Result<std::unique_ptr<MemoryRegistration>> AgentImpl::register_memory(const DescList& list,
                                                                       const std::string& backend) {
  if (list.descs.empty()) return err(ErrorCode::InvalidArgument, "no regions to register");
  if (list.type == MemType::Unknown) {
    return err(ErrorCode::InvalidArgument, "cannot register memory of type UNKNOWN");
  }
  std::vector<Backend*> chosen;
  if (!backend.empty()) {
    Backend* b = backend_named(backend);
    if (b == nullptr)
      return err(ErrorCode::NotFound, "agent '", name_, "' has no backend '", backend, "'");
    if (!b->can_register(list.type)) {
      return err(ErrorCode::Unsupported, "backend ", backend, " does not register ",
                 to_string(list.type));
    }
    chosen.push_back(b);
  } else {
    for (size_t i = 0; i < backend_count(); ++i) {
      if (backends_[i]->can_register(list.type)) chosen.push_back(backends_[i].get());
    }
    if (chosen.empty()) {
      return err(ErrorCode::Unsupported, "no backend of agent '", name_, "' registers ",
                 to_string(list.type), " memory");
    }
  }

  std::vector<std::pair<RegionKey, std::shared_ptr<LocalRegionEntry>>> made;
  for (size_t i = 0; i < list.descs.size(); ++i) {
    const Desc& d = list.descs[i];
    if (d.len == 0) return err(ErrorCode::InvalidArgument, "region ", i, " has length 0");
    if (d.addr + d.len < d.addr) {
      return err(ErrorCode::InvalidArgument, "region ", i, ": ", describe(d), " overflows");
    }
    auto entry = std::make_shared<LocalRegionEntry>();
    entry->type = list.type;
    entry->desc = d;
    for (Backend* b : chosen) {
      auto region = b->register_region(list.type, d);
      if (!region) {
        return err(ErrorCode::RegistrationFailed, "registering region ", i, " (", describe(d),
                   ") with ", b->name(), ": ", region.error().message);
      }
      std::shared_ptr<LocalRegion> shared = std::move(*region);
      auto view = b->load_remote_region(name_, list.type, d, shared->remote_info());
      if (view) entry->loopback.items.emplace_back(b, std::move(*view));
      entry->regions.items.emplace_back(b, std::move(shared));
    }
    made.emplace_back(RegionKey{list.type, d.dev_id, d.addr}, std::move(entry));
  }

  std::vector<RegionKey> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < made.size(); ++i) {
      const Desc& d = made[i].second->desc;
      bool self_overlap = false;
      for (size_t j = 0; j < i; ++j) {
        const Desc& o = made[j].second->desc;
        if (d.dev_id == o.dev_id && d.addr < o.addr + o.len && o.addr < d.addr + d.len)
          self_overlap = true;
      }
      if (self_overlap || overlaps_any(local_, list.type, d)) {
        return err(ErrorCode::InvalidArgument, "region ", i, " (", describe(d),
                   ") overlaps memory already registered with agent '", name_, "'");
      }
    }
    for (auto& [key, entry] : made) {
      local_.emplace(key, entry);
      keys.push_back(key);
    }
  }
  return std::unique_ptr<MemoryRegistration>(
      std::make_unique<MemoryRegistrationImpl>(alive_, name_, list, std::move(keys)));
}

Status AgentImpl::register_storage(RegisterableStorage& storage, const std::string& backend) {
  if (storage.is_registered(kRegistrationKey)) {
    return err(ErrorCode::AlreadyRegistered, storage.type().to_string(),
               " storage is already registered with an agent");
  }
  // The Disk rule holds on every path (register_with_agent comes here too): registration
  // unlinks the file, and an unlinked file (whose name may already be another file's) is
  // never registered again.
  auto* disk = dynamic_cast<DiskStorage*>(&storage);
  if (disk != nullptr && disk->unlinked()) {
    return err(ErrorCode::InvalidArgument, "disk storage '", disk->path().string(),
               "' is already unlinked; it cannot be registered again");
  }
  auto list = desc_list_of(storage);
  if (!list) return list.error();
  auto reg = register_memory(*list, backend);
  if (!reg) return reg.error();
  KVBM_TRY(storage.register_handle(kRegistrationKey, std::move(*reg)));
  if (disk != nullptr) {
    if (auto st = disk->unlink(); !st) {
      (void)storage.deregister(kRegistrationKey);
      return st;
    }
  }
  return {};
}

void AgentImpl::deregister(const std::vector<RegionKey>& keys) {
  std::vector<std::shared_ptr<LocalRegionEntry>> dropped;  // released outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys) {
    auto it = local_.find(k);
    if (it == local_.end()) continue;
    it->second->deregistered.store(true, std::memory_order_release);
    dropped.push_back(std::move(it->second));
    local_.erase(it);
  }
}

AgentMetadata AgentImpl::metadata_of(const std::vector<RegionKey>* regions,
                                     bool with_connection) const {
  AgentMetadata md;
  md.name = name_;
  md.incarnation = incarnation_;
  md.partial = regions != nullptr;
  if (with_connection) {
    for (size_t i = 0; i < backend_count(); ++i) {
      md.backends[backends_[i]->name()] = backends_[i]->connection_info();
    }
  }
  auto add = [&md](const LocalRegionEntry& entry) {
    RegionMetadata r;
    r.type = entry.type;
    r.desc = entry.desc;
    for (const auto& [b, region] : entry.regions.items)
      r.remote_info[b->name()] = region->remote_info();
    md.regions.push_back(std::move(r));
  };
  std::lock_guard<std::mutex> lock(mu_);
  if (regions == nullptr) {
    md.regions.reserve(local_.size());
    for (const auto& [key, entry] : local_) add(*entry);
  } else {
    for (const RegionKey& k : *regions) {
      if (auto it = local_.find(k); it != local_.end()) add(*it->second);
    }
  }
  return md;
}

Result<std::string> AgentImpl::local_metadata() const {
  return encode_metadata(metadata_of(nullptr, true), config_.auth_key);
}

Result<std::string> AgentImpl::local_partial_metadata(const DescList& regions,
                                                      bool with_connection) const {
  if (regions.descs.empty() && !with_connection) {
    return err(ErrorCode::InvalidArgument,
               "partial metadata of no regions and no connection data would carry nothing");
  }
  std::vector<RegionKey> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < regions.descs.size(); ++i) {
      const Desc& d = regions.descs[i];
      const auto* found = find_region(local_, regions.type, d);
      const LocalRegionEntry* e = found ? found->get() : nullptr;
      if (e == nullptr) {
        return err(ErrorCode::OutOfBounds, "descriptor ", i, " (", to_string(regions.type), " ",
                   describe(d), ") is not inside memory registered with agent '", name_, "'");
      }
      const RegionKey k{e->type, e->desc.dev_id, e->desc.addr};
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
  }
  return encode_metadata(metadata_of(&keys, with_connection), config_.auth_key);
}

Result<std::string> AgentImpl::load_remote_metadata(std::string_view bytes) {
  auto md = decode_metadata(bytes, config_.max_metadata_bytes, config_.auth_key);
  if (!md) return md.error();
  return load_metadata(std::move(*md));
}

Result<std::string> AgentImpl::load_metadata(AgentMetadata md) {
  if (md.name == name_) {
    return err(ErrorCode::InvalidArgument, "metadata of agent '", name_,
               "' is this agent's own; transfers to itself need no metadata");
  }
  std::lock_guard<std::mutex> load_lock(load_mu_);
  std::shared_ptr<RemotePeer> existing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = remotes_.find(md.name);
    if (it != remotes_.end()) existing = it->second;
  }
  // Partial metadata of the loaded incarnation, with its connection data or none: merged.
  const bool merge = md.partial && existing && existing->incarnation == md.incarnation &&
                     (md.backends.empty() || md.backends == existing->connection);
  if (md.partial && !merge && md.backends.empty()) {
    if (!existing) {
      return err(ErrorCode::NotFound, "partial metadata of agent '", md.name,
                 "' holds regions only, and the agent is not loaded: load its metadata (or "
                 "partial metadata with its connection data) first");
    }
    return err(ErrorCode::InvalidArgument, "partial metadata of agent '", md.name,
               "' is of incarnation ", kvbm::detail::hex(md.incarnation), ", the loaded one of ",
               kvbm::detail::hex(existing->incarnation),
               " (it restarted?): load its metadata again");
  }
  std::shared_ptr<RemotePeer> peer = existing;
  if (!merge) {
    auto made = connect_peer(md);
    if (!made) return made.error();
    peer = std::move(*made);
  }
  std::vector<std::pair<RegionKey, std::shared_ptr<RemoteRegionEntry>>> entries;
  for (size_t i = 0; i < md.regions.size(); ++i) {
    auto entry = load_region(*peer, md.regions[i], i);
    if (!entry) return entry.error();
    const Desc& d = md.regions[i].desc;
    entries.emplace_back(RegionKey{md.regions[i].type, d.dev_id, d.addr}, std::move(*entry));
  }
  std::shared_ptr<RemotePeer> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& item : entries) {
      const RemoteRegionEntry& added = *item.second;
      // A region added over others (the peer registered anew there) replaces them.
      if (merge) {
        std::erase_if(peer->regions, [&added](const auto& kv) {
          const RemoteRegionEntry& o = *kv.second;
          return o.type == added.type && o.desc.dev_id == added.desc.dev_id &&
                 o.desc.addr < added.desc.addr + added.desc.len &&
                 added.desc.addr < o.desc.addr + o.desc.len;
        });
      }
      peer->regions[item.first] = std::move(item.second);
    }
    if (!merge) {
      auto& slot = remotes_[md.name];
      old = std::move(slot);
      slot = peer;
    }
  }
  if (old) old->gone = true;  // its requests fail on the next post; connections were replaced
  return md.name;
}

Result<std::shared_ptr<RemotePeer>> AgentImpl::connect_peer(const AgentMetadata& md) {
  auto peer = std::make_shared<RemotePeer>();
  peer->name = md.name;
  peer->connection = md.backends;
  peer->incarnation = md.incarnation;
  for (const auto& [bname, conn] : md.backends) {
    Backend* b = backend_named(bname);
    if (b == nullptr) continue;  // a transport we lack; others may still do
    if (auto st = b->connect(md.name, conn); !st) {
      // Refused connection data keeps its code (InvalidArgument, Unsupported); UCX's own
      // failures are Remote already.
      return err(st.code(), "connecting to agent '", md.name, "' over ", bname, ": ",
                 st.error().message);
    }
    peer->connected.push_back(b);
  }
  return peer;
}

Result<std::shared_ptr<RemoteRegionEntry>> AgentImpl::load_region(const RemotePeer& peer,
                                                                  const RegionMetadata& r,
                                                                  size_t index) {
  auto entry = std::make_shared<RemoteRegionEntry>();
  entry->type = r.type;
  entry->desc = r.desc;
  for (const auto& [bname, info] : r.remote_info) {
    Backend* b = backend_named(bname);
    if (b == nullptr ||
        std::find(peer.connected.begin(), peer.connected.end(), b) == peer.connected.end())
      continue;
    auto region = b->load_remote_region(peer.name, r.type, r.desc, info);
    if (!region) {
      return err(ErrorCode::InvalidArgument, "agent '", peer.name, "' region ", index, " (",
                 describe(r.desc), ") for ", bname, ": ", region.error().message);
    }
    entry->regions.items.emplace_back(b, std::move(*region));
  }
  return entry;
}

Status AgentImpl::invalidate_remote(const std::string& agent) {
  if (discovery_) discovery_->forget(agent);
  return drop_remote(agent);
}

Status AgentImpl::drop_remote(const std::string& agent) {
  std::shared_ptr<RemotePeer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = remotes_.find(agent);
    if (it == remotes_.end())
      return err(ErrorCode::NotFound, "agent '", agent, "' is not known to '", name_, "'");
    peer = std::move(it->second);
    remotes_.erase(it);
  }
  peer->gone = true;
  for (Backend* b : peer->connected) b->disconnect(agent);
  return {};
}

bool AgentImpl::has_remote(const std::string& agent) const {
  std::lock_guard<std::mutex> lock(mu_);
  return remotes_.count(agent) != 0;
}

Result<uint16_t> AgentImpl::listen(const std::string& host, uint16_t port) {
  std::lock_guard<std::mutex> lock(listen_mu_);
  if (side_channel_) {
    return err(ErrorCode::InvalidArgument, "agent '", name_, "' already listens on port ",
               side_channel_->port());
  }
  SideChannelOptions options;
  options.auth_key = config_.auth_key;
  // Room for a few replies of the largest size at once (shared buffers: one per item).
  options.max_reply_bytes =
      std::max(options.max_reply_bytes, std::min(config_.max_metadata_bytes, SIZE_MAX / 4) * 4);
  auto server = SideChannelServer::start(
      host, port, [this](const std::string& key) { return serve(key); }, std::move(options));
  if (!server) return server.error();
  side_channel_ = std::move(*server);
  return side_channel_->port();
}

Result<std::string> AgentImpl::fetch_remote_metadata(const std::string& host, uint16_t port,
                                                     std::chrono::milliseconds timeout) {
  auto bytes = fetch_blob(host, port, "", timeout, config_.max_metadata_bytes, config_.auth_key);
  if (!bytes) return bytes.error();
  return load_remote_metadata(*bytes);
}

static_assert(Agent::kMaxPublishedKeyBytes == kMaxKeyBytes,
              "a published key must fit a side-channel request");

namespace {

// An item key is what the side channel asks for; the empty key is the metadata's.
Status check_item_key(const std::string& agent, const std::string& key) {
  if (key.empty()) {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "': an item key must not be empty (the empty key names the metadata)");
  }
  if (key.size() > Agent::kMaxPublishedKeyBytes) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "': item key of ", key.size(),
               " bytes exceeds ", Agent::kMaxPublishedKeyBytes);
  }
  return {};
}

}  // namespace

Status AgentImpl::publish(const std::string& key, std::string bytes) {
  KVBM_TRY(check_item_key(name_, key));
  if (bytes.size() > config_.max_metadata_bytes) {
    return err(ErrorCode::InvalidArgument, "agent '", name_, "': item '", key, "' of ",
               bytes.size(), " bytes exceeds max_metadata_bytes ", config_.max_metadata_bytes);
  }
  auto item = std::make_shared<const std::string>(std::move(bytes));
  std::shared_ptr<const std::string> old;  // freed outside the lock
  {
    std::lock_guard<std::mutex> lock(published_mu_);
    old = std::exchange(published_[key], item);
  }
  if (discovery_) return discovery_->publish_item(key, *item);
  return {};
}

Status AgentImpl::unpublish(const std::string& key) {
  std::shared_ptr<const std::string> old;
  {
    std::lock_guard<std::mutex> lock(published_mu_);
    auto it = published_.find(key);
    if (it == published_.end()) {
      return err(ErrorCode::NotFound, "no item '", key, "' published by agent '", name_, "'");
    }
    old = std::move(it->second);
    published_.erase(it);
  }
  if (discovery_) return discovery_->unpublish_item(key);
  return {};
}

Result<std::string> AgentImpl::fetch_published(const std::string& host, uint16_t port,
                                               const std::string& key,
                                               std::chrono::milliseconds timeout) {
  KVBM_TRY(check_item_key(name_, key));
  return fetch_blob(host, port, key, timeout, config_.max_metadata_bytes, config_.auth_key);
}

Result<Blob> AgentImpl::serve(const std::string& key) {
  if (key.empty()) {
    auto md = local_metadata();
    if (!md) return md.error();
    // The same bytes as last time are served from the same buffer, shared by every client.
    if (!served_metadata_ || *served_metadata_ != *md)
      served_metadata_ = std::make_shared<const std::string>(std::move(*md));
    return served_metadata_;
  }
  std::shared_ptr<const std::string> item;
  {
    std::lock_guard<std::mutex> lock(published_mu_);
    auto it = published_.find(key);
    if (it != published_.end()) item = it->second;
  }
  if (!item)
    return err(ErrorCode::NotFound, "no item '", key, "' published by agent '", name_, "'");
  return item;
}

Status check_counts(size_t local, size_t remote) {
  if (local == 0) return err(ErrorCode::InvalidArgument, "a request needs at least one descriptor");
  if (local != remote) {
    return err(ErrorCode::InvalidArgument, "descriptor counts differ: ", local, " local vs ",
               remote, " remote");
  }
  return {};
}

Status check_lengths(size_t i, uint64_t local_len, uint64_t remote_len) {
  if (local_len != remote_len) {
    return err(ErrorCode::InvalidArgument, "descriptor ", i, ": local length ", local_len,
               " != remote length ", remote_len);
  }
  if (local_len == 0) return err(ErrorCode::InvalidArgument, "descriptor ", i, " has length 0");
  return {};
}

Result<std::shared_ptr<RemotePeer>> AgentImpl::find_peer_locked(const std::string& agent) const {
  auto it = remotes_.find(agent);
  if (it == remotes_.end()) {
    return err(ErrorCode::NotFound, "agent '", agent, "' is not known to '", name_,
               "': load its metadata first");
  }
  std::lock_guard<std::mutex> f(it->second->failure_mu);
  if (it->second->failure)
    return err(ErrorCode::Remote, "agent '", agent, "' failed: ", it->second->failure->message);
  return it->second;
}

Result<const std::shared_ptr<LocalRegionEntry>*> AgentImpl::find_local_locked(const char* what,
                                                                              size_t i,
                                                                              MemType type,
                                                                              const Desc& d) const {
  const auto* entry = find_region(local_, type, d);
  if (entry == nullptr) {
    return err(ErrorCode::OutOfBounds, what, i, " (", to_string(type), " ", describe(d),
               ") is not inside memory registered with agent '", name_, "'");
  }
  return entry;
}

Result<const RemoteRegionEntry*> AgentImpl::find_remote_locked(const char* what, size_t i,
                                                               const RemotePeer& peer, MemType type,
                                                               const Desc& d) const {
  const auto* entry = find_region(peer.regions, type, d);
  if (entry == nullptr) {
    return err(ErrorCode::OutOfBounds, what, i, " (", to_string(type), " ", describe(d),
               ") is not inside memory agent '", peer.name, "' has registered");
  }
  return entry->get();
}

Error AgentImpl::no_backend(MemType local, MemType remote, const std::string& remote_agent) const {
  return err(ErrorCode::Unsupported, "no backend of agent '", name_, "' moves ", to_string(local),
             " <-> ", to_string(remote), " with agent '", remote_agent, "' for these descriptors");
}

Result<Backend*> AgentImpl::choose_notifier(Backend* chosen, const RemotePeer* peer,
                                            const std::string& remote_agent) const {
  if (chosen->supports_notifications()) return nullptr;
  // A backend without messaging (CUDA) moves the data; another one connecting the same
  // peers (UCX) delivers the notification once the data is complete.
  if (peer == nullptr) {
    for (size_t b = 0; b < backend_count(); ++b) {
      if (backends_[b]->supports_notifications()) return backends_[b].get();
    }
  } else {
    for (Backend* b : peer->connected) {
      if (b->notifies_peers()) return b;
    }
  }
  return err(ErrorCode::Unsupported, "backend ", chosen->name(),
             " cannot deliver notifications, and no other backend connects '", name_, "' to '",
             remote_agent, "'");
}

Result<std::unique_ptr<Request>> AgentImpl::finish_request(
    Op op, Backend* chosen, Backend* notifier, std::shared_ptr<RemotePeer> peer,
    const std::string& remote_agent, std::vector<Segment> segments,
    std::vector<std::shared_ptr<void>> keep, std::optional<std::string> notification) {
  // A moved-from optional stays engaged: hand the backend the message only when it sends it.
  std::optional<std::string> deferred;
  if (notifier != nullptr) {
    deferred = std::move(notification);
    notification.reset();
  }
  auto prepared = chosen->prepare(op, remote_agent, std::move(segments), std::move(notification));
  if (!prepared) return prepared.error();
  auto request = std::make_unique<RequestImpl>(this, chosen, std::move(peer), std::move(*prepared),
                                               std::move(keep));
  if (notifier != nullptr) request->notify_after(notifier, remote_agent, std::move(*deferred));
  return std::unique_ptr<Request>(std::move(request));
}

Result<std::unique_ptr<Request>> AgentImpl::create_request(
    Op op, const DescList& local, const DescList& remote, const std::string& remote_agent,
    std::optional<std::string> notification) {
  const bool self = remote_agent == name_;
  KVBM_TRY(check_counts(local.descs.size(), remote.descs.size()));
  for (size_t i = 0; i < local.descs.size(); ++i)
    KVBM_TRY(check_lengths(i, local.descs[i].len, remote.descs[i].len));

  std::unique_lock<std::mutex> lock(mu_);
  std::shared_ptr<RemotePeer> peer;
  if (!self) {
    auto found = find_peer_locked(remote_agent);
    if (!found) return found.error();
    peer = std::move(*found);
  }
  // Each descriptor's region: the local one, and the remote one as the backends see it.
  const size_t n = local.descs.size();
  std::vector<const LocalRegionEntry*> locals(n);
  std::vector<const BackendHandles<RemoteRegion>*> remotes(n);
  for (size_t i = 0; i < n; ++i) {
    auto l = find_local_locked("local descriptor ", i, local.type, local.descs[i]);
    if (!l) return l.error();
    locals[i] = (*l)->get();
    if (self) {
      const auto* e = find_region(local_, remote.type, remote.descs[i]);
      if (e == nullptr) {
        return err(ErrorCode::OutOfBounds, "remote descriptor ", i, " (", to_string(remote.type),
                   " ", describe(remote.descs[i]), ") is not inside memory agent '", remote_agent,
                   "' has registered");
      }
      remotes[i] = &(*e)->loopback;
    } else {
      auto r = find_remote_locked("remote descriptor ", i, *peer, remote.type, remote.descs[i]);
      if (!r) return r.error();
      remotes[i] = &(*r)->regions;
    }
  }

  Backend* chosen = first_backend(local.type, remote.type, [&](size_t, Backend* cand) {
    for (size_t i = 0; i < n; ++i) {
      if (locals[i]->regions.find(cand) == nullptr || remotes[i]->find(cand) == nullptr)
        return false;
    }
    return true;
  });
  if (chosen == nullptr) return no_backend(local.type, remote.type, remote_agent);
  Backend* notifier = nullptr;
  if (notification) {
    auto found = choose_notifier(chosen, peer.get(), remote_agent);
    if (!found) return found.error();
    notifier = *found;
  }

  std::vector<Segment> segments(n);
  std::vector<std::shared_ptr<void>> keep;  // regions stay alive while the request exists
  for (size_t i = 0; i < n; ++i) {
    segments[i].local = local.descs[i];
    segments[i].remote = remote.descs[i];
    segments[i].local_region = locals[i]->regions.find(chosen);
    segments[i].remote_region = remotes[i]->find(chosen);
    if (i == 0 || segments[i].local_region != segments[i - 1].local_region) {
      for (auto& [b, r] : locals[i]->regions.items) {
        if (b == chosen) keep.push_back(r);
      }
    }
    if (i == 0 || segments[i].remote_region != segments[i - 1].remote_region) {
      for (auto& [b, r] : remotes[i]->items) {
        if (b == chosen) keep.push_back(r);
      }
    }
  }
  lock.unlock();
  return finish_request(op, chosen, notifier, std::move(peer), remote_agent, std::move(segments),
                        std::move(keep), std::move(notification));
}

Status AgentImpl::gen_notif(const std::string& agent, std::string_view message) {
  std::shared_ptr<RemotePeer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = remotes_.find(agent);
    if (it != remotes_.end()) peer = it->second;
  }
  if (!peer && agent != name_)
    return err(ErrorCode::NotFound, "agent '", agent, "' is not known to '", name_, "'");
  std::vector<Backend*> candidates;
  if (peer) {
    candidates = peer->connected;
  } else {
    for (size_t i = 0; i < backend_count(); ++i) candidates.push_back(backends_[i].get());
  }
  // Some backends notify only their own agent (POSIX, GDS): Unsupported moves on to the next.
  std::optional<Status> last;
  for (Backend* b : candidates) {
    if (!b->supports_notifications()) continue;
    Status st = b->send_notification(agent, message);
    if (st || st.code() != ErrorCode::Unsupported) return st;
    last = std::move(st);
  }
  if (last) return *last;
  return err(ErrorCode::Unsupported, "no backend connecting '", name_, "' to '", agent,
             "' carries notifications");
}

void AgentImpl::add_notification(Notification n) {
  std::lock_guard<std::mutex> lock(notif_mu_);
  notifs_.push_back(std::move(n));
}

std::vector<Notification> AgentImpl::get_notifs() {
  if (!config_.progress_thread) progress();
  std::vector<Notification> out;
  std::lock_guard<std::mutex> lock(notif_mu_);
  out.swap(notifs_);
  return out;
}

void AgentImpl::progress() {
  size_t events = 0;
  for (size_t i = 0; i < backend_count(); ++i) {
    events += backends_[i]->progress(Backend::LockWait::Wait);
  }
  if (events > 0) notify_progress();
}

void AgentImpl::notify_progress() {
  if (waiters_.load(std::memory_order_acquire) == 0) return;
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
    ++progress_events_;
  }
  wait_cv_.notify_all();
}

void AgentImpl::wait_for_progress(std::chrono::steady_clock::time_point until) {
  if (!config_.progress_thread) {
    progress();
    return;
  }
  waiters_.fetch_add(1, std::memory_order_acq_rel);
  {
    std::unique_lock<std::mutex> lock(wait_mu_);
    const uint64_t seen = progress_events_;
    // Bounded wait: completions that raced with the check above are seen within 1 ms.
    auto limit = std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(1));
    wait_cv_.wait_until(lock, limit, [&] { return progress_events_ != seen; });
  }
  waiters_.fetch_sub(1, std::memory_order_acq_rel);
}

void AgentImpl::progress_loop() {
  // Spin while there is traffic; back off to short sleeps when idle, so that TCP's
  // emulated RMA (which needs the target to progress) keeps moving.
  int idle = 0;
  while (!stop_.load(std::memory_order_acquire)) {
    size_t events = 0;
    for (size_t i = 0; i < backend_count(); ++i) {
      events += backends_[i]->progress(Backend::LockWait::Skip);
    }
    if (events > 0) {
      notify_progress();
      idle = 0;
      continue;
    }
    if (++idle < 512) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(idle < 4096 ? 20 : 200));
    }
  }
}

void AgentImpl::track(RequestImpl* request) {
  std::lock_guard<std::mutex> lock(requests_mu_);
  requests_.insert(request);
}

void AgentImpl::forget(RequestImpl* request) {
  std::lock_guard<std::mutex> lock(requests_mu_);
  requests_.erase(request);
}

void AgentImpl::peer_timed_out(const std::shared_ptr<RemotePeer>& peer, Backend* backend,
                               const Error& why) {
  if (!peer || peer->gone) return;  // a gone peer's connection already belongs to its successor
  {
    std::lock_guard<std::mutex> f(peer->failure_mu);
    if (peer->failure) return;
    peer->failure = why;
    peer->failed.store(true, std::memory_order_release);
  }
  log(LogLevel::Warn, "agent '" + name_ + "': peer '" + peer->name + "' failed: " + why.message);
  // Ends every request in flight with that peer; other peers are untouched.
  backend->peer_failed(peer->name);
}

void AgentImpl::connection_changed() {
  log(LogLevel::Warn, "agent '" + name_ +
                          "': its connection data changed; peers that loaded its metadata before "
                          "must load it again");
  if (!discovery_ || !discovery_->publishes_metadata()) return;
  if (auto st = publish_metadata(); !st) {
    log(LogLevel::Warn,
        "agent '" + name_ + "': its new metadata was not published to etcd: " + st.error().message);
  }
}

}  // namespace detail
}  // namespace kvbm::xfer
