// MemoryRegistration as the agent returns it: deregisters its regions on release.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kvbm/log.h"
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
  ~MemoryRegistrationImpl() override {
    if (auto st = release(); !st) log(LogLevel::Error, st.error().to_string());
  }

  // Idempotent. RegistrationFailed if the agent is already gone.
  Status release() override {
    if (keys_.empty()) return {};
    auto keys = std::move(keys_);
    keys_.clear();
    auto agent = agent_.lock();
    if (!agent) {
      return err(ErrorCode::RegistrationFailed, "agent '", agent_name_,
                 "' was destroyed before its memory registration");
    }
    (*agent)->deregister(keys);
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
