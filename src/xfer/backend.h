// The interface every transport implements (src/xfer/backends/<name>/). The agent owns
// its backends, validates requests, and hands each backend only what it must move.
//
// Thread safety: a backend is internally synchronized; the agent calls it from any
// thread, including its progress thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

// A local region registered with one backend. Destroying it deregisters it.
class LocalRegion {
 public:
  virtual ~LocalRegion() = default;
  // Bytes a peer's backend needs to reach this region (UCX: the packed remote key; CUDA:
  // an IPC handle). Published in the agent's metadata; may be empty.
  virtual std::string remote_info() const = 0;
};

// A peer's region, prepared by this backend from the peer's remote_info (UCX: an
// unpacked remote key). Destroyed when the peer is invalidated or its metadata replaced.
class RemoteRegion {
 public:
  virtual ~RemoteRegion() = default;
};

// One contiguous piece of a validated transfer: equal lengths, both ranges inside the
// regions given, which belong to the backend that gets the segment.
struct Segment {
  Desc local;
  Desc remote;
  LocalRegion* local_region = nullptr;
  RemoteRegion* remote_region = nullptr;
};

// One prepared transfer inside a backend. Destroying it cancels it if in flight.
class BackendRequest {
 public:
  virtual ~BackendRequest() = default;
  // Starts (or restarts, after Done/Error) the transfer.
  virtual Status post() = 0;
  // Never blocks: InProgress, Done or Error (then error() says why).
  virtual XferState poll() = 0;
  virtual Error error() const = 0;
  // A count that grows whenever part of the posted transfer completes (a get or put, a
  // chunk): the agent's peer timeout counts from its last change, so a large transfer
  // that keeps moving over a slow link is not cut off. 0 always: from post() alone.
  virtual uint64_t progress() const { return 0; }
};

// What the agent gives each backend it creates.
struct BackendEnv {
  std::string agent_name;
  std::chrono::milliseconds peer_timeout{10000};
  // Delivers a received notification to the agent; backends call it from progress().
  std::function<void(Notification)> on_notification;
  // Wakes threads waiting on requests (called after progress() completed something).
  std::function<void()> on_completion;
  // Whether a thread sleeps in Request::wait now: work done only to wake such threads
  // (polling GPU events) can be skipped while it says no. Null: assume someone does.
  std::function<bool()> has_waiters;
  // connection_info() changed (the backend replaced its transport's state after a peer's
  // death): peers must load the agent's metadata again. Called without the backend's lock.
  std::function<void()> on_connection_changed;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const std::string& name() const = 0;
  // Memory types this backend registers locally.
  virtual bool can_register(MemType type) const = 0;
  // Whether it moves bytes between local memory of type `local` and peer memory of
  // type `remote` (a peer may be this agent itself).
  virtual bool supports(MemType local, MemType remote) const = 0;

  // Connection data for the agent's metadata (UCX: the worker address); may be empty.
  virtual std::string connection_info() const = 0;
  virtual Result<std::unique_ptr<LocalRegion>> register_region(MemType type,
                                                               const Desc& region) = 0;

  // Connects to a peer (the agent itself included) from its connection data, replacing
  // an earlier connection to the same name.
  virtual Status connect(const std::string& agent, std::string_view connection_info) = 0;
  // Drops the connection and everything tied to the peer; requests in flight to it end
  // in an error.
  virtual void disconnect(const std::string& agent) = 0;
  // The agent gave up on `agent` (a request with it made no progress within the peer
  // timeout): drop it as disconnect() does. A backend whose transport a dead peer can
  // leave blocked for every peer recovers here (and says so through
  // BackendEnv::on_connection_changed where its connection data changes).
  virtual void peer_failed(const std::string& agent) { disconnect(agent); }
  // Finishes setting up the connection to `agent` (connected already) within `timeout`,
  // so that its first request does not pay for it (Agent::connect). Default: nothing to do.
  // NotFound if not connected; Timeout if the peer does not answer in time; Remote if the
  // connection failed.
  virtual Status establish(const std::string& agent, std::chrono::milliseconds timeout) {
    (void)agent;
    (void)timeout;
    return {};
  }
  virtual Result<std::unique_ptr<RemoteRegion>> load_remote_region(
      const std::string& agent, MemType type, const Desc& region, std::string_view remote_info) = 0;

  // Prepares a transfer of `segments` with `agent`; nothing moves until post().
  virtual Result<std::unique_ptr<BackendRequest>> prepare(
      Op op, const std::string& agent, std::vector<Segment> segments,
      std::optional<std::string> notification) = 0;

  virtual bool supports_notifications() const = 0;
  // Whether notifications reach other agents, not only this one (POSIX and GDS: only self).
  virtual bool notifies_peers() const { return supports_notifications(); }
  virtual Status send_notification(const std::string& agent, std::string_view message) = 0;

  // How progress() treats its lock when another thread holds it.
  enum class LockWait {
    Skip,  // return 0 at once: the progress thread, which comes back soon anyway
    Wait,  // take it: Agent::progress, which promises to synchronize with that thread
  };
  // Drives communication once; returns the number of events handled (0: idle).
  virtual size_t progress(LockWait wait) = 0;
  // progress()'s lock on `mu`, taken or only tried as `wait` says; not owned when skipped.
  static std::unique_lock<std::mutex> progress_lock(std::mutex& mu, LockWait wait) {
    if (wait == LockWait::Wait) return std::unique_lock<std::mutex>(mu);
    return std::unique_lock<std::mutex>(mu, std::try_to_lock);
  }
};

using BackendFactory =
    std::function<Result<std::unique_ptr<Backend>>(const BackendEnv&, const BackendParams&)>;

// The backend types this build knows: "UCX", and others as they are compiled in.
Result<std::unique_ptr<Backend>> make_backend(const std::string& type, const BackendEnv& env,
                                              const BackendParams& params);
std::vector<std::string> known_backends();

}  // namespace kvbm::xfer::detail
