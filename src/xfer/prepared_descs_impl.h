// PreparedDescs as the agent makes it (agent_prepared.cc): each descriptor resolved to the
// region handles it lies in, with the backends that hold a handle for it, and per list the
// backends that cover every descriptor, so a request by index needs no lookup and, in the
// usual case, no per-descriptor search for its backend.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "xfer/agent_impl.h"

namespace kvbm::xfer {

class PreparedDescsImpl;

namespace detail {

// Backends by their slot in the agent (bit b: the agent's b-th backend).
using BackendMask = uint32_t;

// The lists an agent made, so that its destructor releases what they hold before its
// backends go. Shared by the agent and its lists: a list may outlive the agent.
struct PreparedRegistry {
  std::mutex mu;
  bool closed = false;  // the agent is gone (or going): lists hold nothing any more
  std::set<PreparedDescsImpl*> lists;
};

}  // namespace detail

// In kvbm::xfer, as PreparedDescs names it its only friend.
class PreparedDescsImpl final : public PreparedDescs,
                                public std::enable_shared_from_this<PreparedDescsImpl> {
 public:
  // One descriptor, resolved.
  struct Resolved {
    // Own memory: the region as registered here (null in a peer's list).
    const detail::BackendHandles<detail::LocalRegion>* local = nullptr;
    // The region as a transfer's remote side sees it: the peer's, or this agent's loopback.
    const detail::BackendHandles<detail::RemoteRegion>* remote = nullptr;
    // Own memory: set once the region is deregistered (null in a peer's list).
    const std::atomic<bool>* deregistered = nullptr;
    detail::BackendMask local_backends = 0;
    detail::BackendMask remote_backends = 0;
  };

  PreparedDescsImpl(std::shared_ptr<detail::PreparedRegistry> registry, std::string agent,
                    DescList descs, bool own)
      : registry_(std::move(registry)),
        agent_(std::move(agent)),
        descs_(std::move(descs)),
        own_(own) {}
  ~PreparedDescsImpl() override;

  const std::string& agent() const override { return agent_; }
  const DescList& descs() const override { return descs_; }

  // Filled by the agent before the list is handed out; immutable afterwards.
  std::vector<Resolved> resolved;
  std::vector<std::shared_ptr<detail::LocalRegionEntry>> entries;  // own memory: the regions held
  std::shared_ptr<detail::RemotePeer> peer;                        // a peer's memory: its metadata
  detail::BackendMask all_local =
      ~detail::BackendMask{0};  // backends covering every descriptor, locally
  detail::BackendMask all_remote = ~detail::BackendMask{0};  // and as the remote side

  const detail::PreparedRegistry* registry() const { return registry_.get(); }
  bool own() const { return own_; }
  // Drops what the list holds (registry lock held): its agent is going.
  void release();

 private:
  const std::shared_ptr<detail::PreparedRegistry> registry_;
  const std::string agent_;
  const DescList descs_;
  const bool own_;
};

}  // namespace kvbm::xfer
