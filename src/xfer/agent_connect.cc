// Agent::connect (agent.h): a loaded peer's connections set up before its first request.
#include "xfer/agent_impl.h"

namespace kvbm::xfer::detail {

Status AgentImpl::connect(const std::string& agent) {
  std::shared_ptr<RemotePeer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = remotes_.find(agent);
    if (it == remotes_.end()) {
      return err(ErrorCode::NotFound, "agent '", agent, "' is not known to '", name_,
                 "': load its metadata first");
    }
    peer = it->second;
  }
  if (peer->failed.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> f(peer->failure_mu);
    return err(ErrorCode::Remote, "agent '", agent, "' failed: ", peer->failure->message);
  }
  for (Backend* b : peer->connected) {
    Status st = b->establish(agent, config_.peer_timeout);
    if (st) continue;
    Error e = err(st.code(), "connecting to agent '", agent, "' over ", b->name(), ": ",
                  st.error().message);
    // As a request that timed out: the peer is failed, and its requests end.
    if (st.code() == ErrorCode::Timeout) peer_timed_out(peer, b, e);
    return e;
  }
  return {};
}

}  // namespace kvbm::xfer::detail
