// MemoryRegistration as the agent returns it: deregisters its regions on release.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "xfer/agent_impl.h"

namespace kvbm::xfer::detail {

class MemoryRegistrationImpl final : public MemoryRegistration {
 public:
  MemoryRegistrationImpl(std::weak_ptr<AgentImpl*> agent, std::string agent_name, DescList regions,
                         std::vector<RegionKey> keys)
      : agent_(std::move(agent)),
        agent_name_(std::move(agent_name)),
        regions_(std::move(regions)),
        keys_(std::move(keys)) {}
  ~MemoryRegistrationImpl() override { (void)release(); }

  // Idempotent, and never fails: an agent destroyed first released the regions itself
  // (before its backends went), so storages and their agent may go in either order.
  Status release() override {
    if (keys_.empty()) return {};
    auto keys = std::move(keys_);
    keys_.clear();
    if (auto agent = agent_.lock()) (*agent)->deregister(keys);
    return {};
  }
  const std::string& agent_name() const override { return agent_name_; }
  const DescList& regions() const override { return regions_; }

 private:
  std::weak_ptr<AgentImpl*> agent_;
  std::string agent_name_;
  DescList regions_;
  std::vector<RegionKey> keys_;
};

}  // namespace kvbm::xfer::detail
