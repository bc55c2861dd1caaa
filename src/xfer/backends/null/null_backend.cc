#include "xfer/backends/null/null_backend.h"

#include <atomic>
#include <cstring>
#include <utility>

#include "xfer/backend_params.h"

namespace kvbm::xfer::detail {
namespace {

// Host memory needs no registration: a region is only a token the agent hands back.
class NullLocalRegion final : public LocalRegion {
 public:
  std::string remote_info() const override { return {}; }
};

class NullRemoteRegion final : public RemoteRegion {};

// A transfer between this agent's own regions: memcpy per segment, within post().
class NullRequest final : public BackendRequest {
 public:
  NullRequest(const BackendEnv& env, Op op, std::vector<Segment> segments,
              std::optional<std::string> notification)
      : env_(env),
        op_(op),
        segments_(std::move(segments)),
        notification_(std::move(notification)) {}

  Status post() override {
    for (const Segment& s : segments_) {
      auto* local = reinterpret_cast<char*>(s.local.addr);
      auto* remote = reinterpret_cast<char*>(s.remote.addr);
      if (op_ == Op::Write) {
        std::memmove(remote, local, s.local.len);
      } else {
        std::memmove(local, remote, s.local.len);
      }
    }
    // The bytes are in place before the notification is delivered.
    if (notification_ && env_.on_notification) {
      env_.on_notification({env_.agent_name, *notification_});
    }
    state_.store(XferState::Done, std::memory_order_release);
    return {};
  }
  XferState poll() override { return state_.load(std::memory_order_acquire); }
  Error error() const override { return err(ErrorCode::Internal, "NULL requests do not fail"); }

 private:
  const BackendEnv& env_;  // the backend's: it outlives its requests
  const Op op_;
  const std::vector<Segment> segments_;
  const std::optional<std::string> notification_;
  std::atomic<XferState> state_{XferState::Idle};  // polled from any thread
};

class NullBackend final : public Backend {
 public:
  explicit NullBackend(BackendEnv env) : env_(std::move(env)) {}

  const std::string& name() const override { return name_; }
  bool can_register(MemType type) const override { return type == MemType::Dram; }
  bool supports(MemType local, MemType remote) const override {
    return local == MemType::Dram && remote == MemType::Dram;
  }
  std::string connection_info() const override { return {}; }
  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc&) override {
    if (!can_register(type)) {
      return err(ErrorCode::Unsupported, "NULL backend registers DRAM only, not ", to_string(type));
    }
    return std::unique_ptr<LocalRegion>(std::make_unique<NullLocalRegion>());
  }
  Status connect(const std::string&, std::string_view) override { return {}; }
  void disconnect(const std::string&) override {}
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string&, MemType type,
                                                           const Desc&, std::string_view) override {
    if (!can_register(type)) {
      return err(ErrorCode::Unsupported, "NULL backend has no ", to_string(type), " regions");
    }
    return std::unique_ptr<RemoteRegion>(std::make_unique<NullRemoteRegion>());
  }
  Result<std::unique_ptr<BackendRequest>> prepare(
      Op op, const std::string& agent, std::vector<Segment> segments,
      std::optional<std::string> notification) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "NULL backend of agent '", env_.agent_name,
                 "' moves only its own memory, not that of agent '", agent, "'");
    }
    return std::unique_ptr<BackendRequest>(
        std::make_unique<NullRequest>(env_, op, std::move(segments), std::move(notification)));
  }
  bool supports_notifications() const override { return true; }
  bool notifies_peers() const override { return false; }
  Status send_notification(const std::string& agent, std::string_view message) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "NULL backend notifies only its own agent '",
                 env_.agent_name, "', not '", agent, "'");
    }
    if (env_.on_notification) env_.on_notification({agent, std::string(message)});
    return {};
  }
  size_t progress(LockWait) override { return 0; }  // every request is done within post()

 private:
  const std::string name_ = "NULL";
  const BackendEnv env_;
};

}  // namespace

Result<std::unique_ptr<Backend>> make_null_backend(const BackendEnv& env,
                                                   const BackendParams& params) {
  KVBM_TRY(check_param_keys("NULL", params, {}));
  return std::unique_ptr<Backend>(std::make_unique<NullBackend>(env));
}

}  // namespace kvbm::xfer::detail
