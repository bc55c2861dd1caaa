// Request as the agent returns it: a backend request plus the peer-timeout rule, the
// wait loop, and the regions it keeps alive.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "xfer/agent_impl.h"
#include "xfer/backend.h"
#include "xfer/progress_deadline.h"

namespace kvbm::xfer::detail {

class RequestImpl final : public Request {
 public:
  RequestImpl(AgentImpl* agent, Backend* backend, std::shared_ptr<RemotePeer> peer,
              std::unique_ptr<BackendRequest> request,
              std::vector<std::shared_ptr<void>> keep_alive)
      : agent_(agent),
        backend_(backend),
        peer_(std::move(peer)),
        request_(std::move(request)),
        keep_alive_(std::move(keep_alive)) {
    agent_->track(this);
  }
  ~RequestImpl() override;
  // Called by the agent's destructor: ends the transfer (as destroying the request
  // would) and releases what it holds of the agent; later calls fail with that reason.
  void detach(const std::string& why);

  Status post() override;
  XferState state() override;
  Error error() const override { return error_; }
  Status wait(std::chrono::milliseconds timeout) override;

  // Sends `message` to `agent` through `notifier` each time the transfer completes (for
  // backends that cannot notify themselves).
  void notify_after(Backend* notifier, std::string agent, std::string message) {
    notifier_ = notifier;
    notify_agent_ = std::move(agent);
    notify_message_ = std::move(message);
  }

 private:
  AgentImpl* agent_;  // null once the agent was destroyed (detach)
  Backend* backend_;
  std::shared_ptr<RemotePeer> peer_;  // null for transfers within this agent
  std::unique_ptr<BackendRequest> request_;
  std::vector<std::shared_ptr<void>> keep_alive_;
  XferState state_ = XferState::Idle;
  Error error_{ErrorCode::Internal, "request has not failed"};
  std::optional<Error> detached_;  // why, once the agent was destroyed
  ProgressDeadline deadline_;      // the peer timeout, from the last part the backend reported
  Backend* notifier_ = nullptr;
  std::string notify_agent_;
  std::string notify_message_;
};

}  // namespace kvbm::xfer::detail
