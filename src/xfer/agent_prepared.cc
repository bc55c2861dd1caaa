// Prepared descriptor lists: Agent::prepare_descs resolves a list once (region lookups,
// the backends that hold each region); create_request over prepared lists then makes a
// request by index from what was resolved, taking no agent lock. A list holds its regions
// (or its peer's metadata) alive, so a stale list is refused by flags, never by touching
// freed memory.
#include <limits>

#include "xfer/agent_impl.h"
#include "xfer/prepared_descs_impl.h"
#include "xfer/request_impl.h"

namespace kvbm::xfer {

PreparedDescsImpl::~PreparedDescsImpl() {
  // Under the registry's lock: the agent's destructor either released this list already,
  // or waits until it has released its regions, while the backends still live.
  std::lock_guard<std::mutex> lock(registry_->mu);
  if (!registry_->closed) registry_->lists.erase(this);
  release();
}

void PreparedDescsImpl::release() {
  resolved.clear();
  entries.clear();
  peer.reset();
}

namespace detail {

namespace {

// A stale list's peer: invalidated, replaced by newer metadata, or failed.
Status check_peer(const PreparedDescsImpl& list) {
  if (!list.peer) return {};
  if (list.peer->gone.load(std::memory_order_acquire)) {
    return err(ErrorCode::Remote, "agent '", list.agent(),
               "' was invalidated or replaced by newer metadata since the remote list was "
               "prepared; prepare the list again");
  }
  if (list.peer->failed.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(list.peer->failure_mu);
    return err(ErrorCode::Remote, "agent '", list.agent(),
               "' failed: ", list.peer->failure->message);
  }
  return {};
}

// Descriptor `index` of `list` exists and is not stale; errors name the request's `pos`-th
// `role` index.
Status check_index(const PreparedDescsImpl& list, const char* role, size_t pos, uint32_t index) {
  if (index >= list.resolved.size()) {
    return err(ErrorCode::OutOfBounds, role, " index ", index, " (request descriptor ", pos,
               ") is past the end of a prepared list of ", list.size(), " descriptors");
  }
  const auto& r = list.resolved[index];
  if (r.deregistered != nullptr && r.deregistered->load(std::memory_order_acquire)) {
    return err(ErrorCode::NotRegistered, role, " descriptor ", index, " (",
               to_string(list.descs().type), " ", describe(list.descs().descs[index]),
               ") lies in a region deregistered since the list was prepared; prepare the list "
               "again");
  }
  return {};
}

}  // namespace

Result<const PreparedDescsImpl*> AgentImpl::own_list(const PreparedDescs& list,
                                                     const char* role) const {
  // Only PreparedDescsImpl can derive from PreparedDescs (its constructor is private).
  const auto* impl = static_cast<const PreparedDescsImpl*>(&list);
  // A list holds its agent's registry alive, so no other agent can have its address.
  if (impl->registry() != prepared_.get()) {
    return err(ErrorCode::InvalidArgument, "the ", role, " list (of agent '", list.agent(),
               "''s memory) was not prepared by agent '", name_, "'");
  }
  return impl;
}

void AgentImpl::close_prepared() {
  std::lock_guard<std::mutex> lock(prepared_->mu);
  prepared_->closed = true;
  for (PreparedDescsImpl* list : prepared_->lists) list->release();
  prepared_->lists.clear();
}

Result<std::shared_ptr<const PreparedDescs>> AgentImpl::prepare_descs(const DescList& descs,
                                                                      const std::string& agent) {
  const size_t n = descs.descs.size();
  if (n == 0)
    return err(ErrorCode::InvalidArgument, "a prepared list needs at least one descriptor");
  if (n > std::numeric_limits<uint32_t>::max()) {
    return err(ErrorCode::InvalidArgument, "a prepared list of ", n,
               " descriptors exceeds the 32-bit indices of its requests");
  }
  for (size_t i = 0; i < n; ++i) {
    if (descs.descs[i].len == 0)
      return err(ErrorCode::InvalidArgument, "descriptor ", i, " has length 0");
  }
  const bool own = agent == name_;
  auto list = std::make_shared<PreparedDescsImpl>(prepared_, agent, descs, own);
  list->resolved.resize(n);
  // Slots of the backends holding handles of one region.
  auto mask = [this](const auto& handles) {
    BackendMask m = 0;
    for (const auto& [backend, handle] : handles.items) {
      for (size_t b = 0; b < backend_count(); ++b) {
        if (backends_[b].get() == backend) m |= BackendMask{1} << b;
      }
    }
    return m;
  };
  static_assert(kMaxBackends <= sizeof(BackendMask) * 8, "a mask holds every backend slot");
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<RemotePeer> peer;
    if (!own) {
      auto found = find_peer_locked(agent);
      if (!found) return found.error();
      peer = std::move(*found);
    }
    for (size_t i = 0; i < n; ++i) {
      auto& r = list->resolved[i];
      if (own) {
        auto found = find_local_locked("descriptor ", i, descs.type, descs.descs[i]);
        if (!found) return found.error();
        const std::shared_ptr<LocalRegionEntry>& entry = **found;
        if (list->entries.empty() || list->entries.back() != entry) list->entries.push_back(entry);
        r.local = &entry->regions;
        r.remote = &entry->loopback;
        r.deregistered = &entry->deregistered;
        r.local_backends = mask(entry->regions);
      } else {
        auto found = find_remote_locked("descriptor ", i, *peer, descs.type, descs.descs[i]);
        if (!found) return found.error();
        r.remote = &(*found)->regions;
      }
      r.remote_backends = mask(*r.remote);
      list->all_local &= r.local_backends;
      list->all_remote &= r.remote_backends;
    }
    list->peer = std::move(peer);
  }
  {
    std::lock_guard<std::mutex> lock(prepared_->mu);
    prepared_->lists.insert(list.get());
  }
  return std::shared_ptr<const PreparedDescs>(std::move(list));
}

Result<std::unique_ptr<Request>> AgentImpl::create_request(
    Op op, const PreparedDescs& local_list, std::span<const uint32_t> local_indices,
    const PreparedDescs& remote_list, std::span<const uint32_t> remote_indices,
    std::optional<std::string> notification) {
  auto l = own_list(local_list, "local");
  if (!l) return l.error();
  auto r = own_list(remote_list, "remote");
  if (!r) return r.error();
  const PreparedDescsImpl& local = **l;
  const PreparedDescsImpl& remote = **r;
  if (!local.own()) {
    return err(ErrorCode::InvalidArgument, "the local list names memory of agent '", local.agent(),
               "'; prepare it with this agent's name '", name_, "'");
  }
  KVBM_TRY(check_counts(local_indices.size(), remote_indices.size()));
  KVBM_TRY(check_peer(remote));

  const size_t n = local_indices.size();
  std::vector<Segment> segments(n);
  for (size_t i = 0; i < n; ++i) {
    KVBM_TRY(check_index(local, "local", i, local_indices[i]));
    KVBM_TRY(check_index(remote, "remote", i, remote_indices[i]));
    segments[i].local = local.descs().descs[local_indices[i]];
    segments[i].remote = remote.descs().descs[remote_indices[i]];
    KVBM_TRY(check_lengths(i, segments[i].local.len, segments[i].remote.len));
  }
  // Indices are valid from here on.
  auto at_local = [&](size_t i) -> const auto& {
    return local.resolved[local_indices[i]];
  };
  auto at_remote = [&](size_t i) -> const auto& {
    return remote.resolved[remote_indices[i]];
  };

  const MemType ltype = local.descs().type, rtype = remote.descs().type;
  Backend* chosen = first_backend(ltype, rtype, [&](size_t slot, Backend*) {
    const BackendMask bit = BackendMask{1} << slot;
    if ((local.all_local & remote.all_remote & bit) != 0) return true;  // the usual case
    for (size_t i = 0; i < n; ++i) {
      if ((at_local(i).local_backends & at_remote(i).remote_backends & bit) == 0) return false;
    }
    return true;
  });
  if (chosen == nullptr) return no_backend(ltype, rtype, remote.agent());
  Backend* notifier = nullptr;
  if (notification) {
    auto found = choose_notifier(chosen, remote.peer.get(), remote.agent());
    if (!found) return found.error();
    notifier = *found;
  }
  for (size_t i = 0; i < n; ++i) {
    segments[i].local_region = at_local(i).local->find(chosen);
    segments[i].remote_region = at_remote(i).remote->find(chosen);
  }
  // The lists hold the regions; the request holds the lists (made by make_shared only).
  std::vector<std::shared_ptr<void>> keep;
  keep.reserve(2);
  keep.push_back(std::const_pointer_cast<PreparedDescsImpl>(local.shared_from_this()));
  keep.push_back(std::const_pointer_cast<PreparedDescsImpl>(remote.shared_from_this()));
  return finish_request(op, chosen, notifier, remote.peer, remote.agent(), std::move(segments),
                        std::move(keep), std::move(notification));
}

}  // namespace detail
}  // namespace kvbm::xfer
