#include <optional>
#include <thread>

#include "kvbm/log.h"
#include "xfer/request_impl.h"

namespace kvbm::xfer::detail {

RequestImpl::~RequestImpl() {
  if (agent_ == nullptr) return;  // detached: nothing left
  // Destroying the backend request cancels what is still in flight.
  request_.reset();
  agent_->forget(this);
}

void RequestImpl::detach(const std::string& why) {
  detached_ = err(ErrorCode::Cancelled, why);
  if (state_ == XferState::InProgress) {
    // What ended already keeps its outcome (a completed copy is no cancellation).
    const XferState s = request_->poll();
    if (s == XferState::Error) error_ = request_->error();
    state_ = s == XferState::InProgress ? XferState::Error : s;
    if (s == XferState::InProgress) error_ = *detached_;
  }
  request_.reset();  // cancels, or waits for what cannot be cancelled
  keep_alive_.clear();
  peer_.reset();
  notifier_ = nullptr;
  agent_ = nullptr;
}

Status RequestImpl::post() {
  if (detached_) return *detached_;
  if (state_ == XferState::InProgress) {
    return err(ErrorCode::InvalidArgument, "request is already in progress; wait for it first");
  }
  if (peer_) {
    if (peer_->gone) {
      return err(ErrorCode::Remote, "agent '", peer_->name,
                 "' was invalidated or replaced by newer metadata; create the request again");
    }
    if (peer_->failed.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(peer_->failure_mu);
      return err(ErrorCode::Remote, "agent '", peer_->name, "' failed: ", peer_->failure->message);
    }
  }
  if (auto st = request_->post(); !st) {
    state_ = XferState::Error;
    error_ = st.error();
    return st;
  }
  state_ = XferState::InProgress;
  // A same-host copy is over when post() returns: it needs no deadline, nor the clock
  // read that costs as much as the rest of a small request.
  if (request_->poll() == XferState::InProgress) {
    deadline_.start(std::chrono::steady_clock::now(), agent_->config().peer_timeout,
                    request_->progress());
  }
  return {};
}

XferState RequestImpl::state() {
  if (state_ != XferState::InProgress) return state_;
  XferState s = request_->poll();
  // Polling mode drives the backends, unless the request is already over (a same-host
  // copy completes in post()).
  if (s == XferState::InProgress && !agent_->has_progress_thread()) {
    agent_->progress();
    s = request_->poll();
  }
  if (s == XferState::Done) {
    state_ = s;
    if (notifier_ != nullptr) {
      // The data is complete and visible at the target: now the notification may go.
      if (auto st = notifier_->send_notification(notify_agent_, notify_message_); !st) {
        state_ = XferState::Error;
        error_ = err(st.code(), "data moved, but the notification to agent '", notify_agent_,
                     "' failed: ", st.error().message);
      }
    }
  } else if (s == XferState::Error) {
    state_ = s;
    error_ = request_->error();
  } else if (deadline_.expired(std::chrono::steady_clock::now(),
                               [&] { return request_->progress(); })) {
    const auto ms = agent_->config().peer_timeout.count();
    error_ = err(ErrorCode::Timeout, "transfer with agent '", peer_ ? peer_->name : agent_->name(),
                 "' made no progress for ", ms, " ms");
    state_ = XferState::Error;
    agent_->peer_timed_out(peer_, backend_, error_);
  }
  return state_;
}

Status RequestImpl::wait(std::chrono::milliseconds timeout) {
  // The clock is read only once the request is found still in progress: most small
  // requests are over at the first look.
  std::optional<std::chrono::steady_clock::time_point> until, spin_until;
  for (;;) {
    switch (state()) {
      case XferState::Done:
        return {};
      case XferState::Error:
        return error_;
      case XferState::Idle:
        return err(ErrorCode::InvalidArgument, "request was never posted");
      case XferState::InProgress:
        break;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!until) {
      until = now + timeout;
      // With a progress thread, poll for a short while before sleeping on its signal: a
      // copy of a few MiB ends within tens of microseconds, less than its idle back-off.
      spin_until = now + std::chrono::microseconds(50);
    }
    if (now >= *until) {
      return err(ErrorCode::Timeout, "request still in progress after ", timeout.count(), " ms");
    }
    if (agent_->has_progress_thread() && now < *spin_until) {
      std::this_thread::yield();
      continue;
    }
    agent_->wait_for_progress(*until);
  }
}

}  // namespace kvbm::xfer::detail
