#include "xfer/backends/posix/posix_backend.h"

#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>

#include "common/uring_worker.h"
#include "xfer/backend_file_id.h"
#include "xfer/backend_params.h"

namespace kvbm::xfer::detail {
namespace {

using kvbm::detail::FileOp;
using kvbm::detail::UringBatch;
using kvbm::detail::UringWorker;

constexpr const char* kName = "POSIX";

// A registered DRAM region is also a fixed buffer of the ring where the kernel allows
// (UringBatch::add_fixed): I/O into it then skips pinning its pages per request.
class PosixLocalRegion final : public LocalRegion {
 public:
  PosixLocalRegion(MemType t, UringBatch* fixed_in = nullptr, const void* fixed_base = nullptr,
                   FileId file = {})
      : type(t), file(file), fixed_in_(fixed_in), fixed_base_(fixed_base) {}
  ~PosixLocalRegion() override {
    if (fixed_in_ != nullptr) fixed_in_->remove_fixed(fixed_base_);
  }
  std::string remote_info() const override { return {}; }
  const MemType type;
  const FileId file;  // FILE: the file its fd referred to at registration

 private:
  UringBatch* fixed_in_;  // the backend's; regions go before their backend
  const void* fixed_base_;
};

class PosixRemoteRegion final : public RemoteRegion {
 public:
  explicit PosixRemoteRegion(MemType t, FileId file = {}) : type(t), file(file) {}
  const MemType type;
  const FileId file;  // FILE: as PosixLocalRegion::file
};

// One prepared transfer, shared by its request and (while queued or running) the worker.
struct PosixJob {
  std::vector<FileOp> ops;
  // The registered files its ops reach (one entry per run of ops on one fd), checked at
  // each post: an fd replaced since (dup2, or closed and reused) is never read or written.
  struct FileCheck {
    int fd;
    FileId id;
    uint64_t offset, len;  // the first op's, for the error
  };
  std::vector<FileCheck> files;
  std::optional<std::string> notification;
  std::atomic<XferState> state{XferState::Idle};
  Error error{ErrorCode::Internal, "no error"};  // written before state becomes Error
  std::atomic<uint64_t> ticket{UINT64_MAX};      // the worker's, of its last post
};

class PosixBackend;

class PosixRequest final : public BackendRequest {
 public:
  PosixRequest(PosixBackend* backend, std::shared_ptr<PosixJob> job)
      : backend_(backend), job_(std::move(job)) {}
  ~PosixRequest() override;
  Status post() override;
  XferState poll() override { return job_->state.load(std::memory_order_acquire); }
  Error error() const override { return job_->error; }

 private:
  PosixBackend* backend_;
  std::shared_ptr<PosixJob> job_;
};

class PosixBackend final : public Backend {
 public:
  PosixBackend(BackendEnv env, std::unique_ptr<UringWorker> worker, bool fixed_buffers)
      : env_(std::move(env)), worker_(std::move(worker)), fixed_buffers_(fixed_buffers) {}

  const std::string& name() const override { return name_; }
  bool can_register(MemType type) const override {
    return type == MemType::Dram || type == MemType::File;
  }
  bool supports(MemType local, MemType remote) const override {
    return (local == MemType::Dram && remote == MemType::File) ||
           (local == MemType::File && remote == MemType::Dram);
  }
  std::string connection_info() const override { return {}; }

  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc& d) override {
    if (!can_register(type)) {
      return err(ErrorCode::Unsupported, "POSIX backend does not register ", to_string(type));
    }
    if (type == MemType::File) {
      if (d.dev_id > static_cast<uint64_t>(INT_MAX)) {
        return err(ErrorCode::InvalidArgument, "FILE region dev_id ", d.dev_id,
                   " is not a file descriptor");
      }
      if (::fcntl(static_cast<int>(d.dev_id), F_GETFD) < 0) {
        return err(ErrorCode::InvalidArgument, "FILE region fd ", d.dev_id,
                   " is not open: ", std::strerror(errno));
      }
    }
    if (type == MemType::Dram && fixed_buffers_) {
      const auto* base = reinterpret_cast<const void*>(d.addr);
      if (worker_->batch().add_fixed(base, d.len)) {
        return std::unique_ptr<LocalRegion>(
            std::make_unique<PosixLocalRegion>(type, &worker_->batch(), base));
      }
    }
    return std::unique_ptr<LocalRegion>(std::make_unique<PosixLocalRegion>(
        type, nullptr, nullptr, type == MemType::File ? file_id_of(d.dev_id) : FileId{}));
  }

  Status connect(const std::string&, std::string_view) override { return {}; }
  void disconnect(const std::string&) override {}

  // Only this agent's own regions (its loopback), just registered: their fds are current.
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string&, MemType type,
                                                           const Desc& d,
                                                           std::string_view) override {
    if (!can_register(type)) {
      return err(ErrorCode::Unsupported, "POSIX backend has no ", to_string(type), " regions");
    }
    return std::unique_ptr<RemoteRegion>(std::make_unique<PosixRemoteRegion>(
        type, type == MemType::File ? file_id_of(d.dev_id) : FileId{}));
  }

  Result<std::unique_ptr<BackendRequest>> prepare(
      Op op, const std::string& agent, std::vector<Segment> segments,
      std::optional<std::string> notification) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "POSIX backend of agent '", env_.agent_name,
                 "' moves only its own files, not those of agent '", agent, "'");
    }
    auto job = std::make_shared<PosixJob>();
    job->notification = std::move(notification);
    job->ops.reserve(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& s = segments[i];
      const MemType lt = static_cast<PosixLocalRegion*>(s.local_region)->type;
      const MemType rt = static_cast<PosixRemoteRegion*>(s.remote_region)->type;
      if (!supports(lt, rt)) {
        return err(ErrorCode::Unsupported, "POSIX backend: segment ", i, " is ", to_string(lt),
                   " <-> ", to_string(rt), "; only DRAM <-> FILE");
      }
      const bool remote_is_file = rt == MemType::File;
      const Desc& file = remote_is_file ? s.remote : s.local;
      const FileId& id = remote_is_file ? static_cast<PosixRemoteRegion*>(s.remote_region)->file
                                        : static_cast<PosixLocalRegion*>(s.local_region)->file;
      const int fd = static_cast<int>(file.dev_id);
      if (job->files.empty() || job->files.back().fd != fd)
        job->files.push_back({fd, id, file.addr, file.len});
      const Desc& mem = remote_is_file ? s.local : s.remote;
      // READ brings remote bytes to local: from the file when the remote side is the file.
      const bool file_read = (op == Op::Read) == remote_is_file;
      job->ops.push_back({file_read ? FileOp::Kind::Read : FileOp::Kind::Write,
                          static_cast<int>(file.dev_id), file.addr,
                          reinterpret_cast<void*>(static_cast<uintptr_t>(mem.addr)), file.len});
    }
    return std::unique_ptr<BackendRequest>(std::make_unique<PosixRequest>(this, std::move(job)));
  }

  bool supports_notifications() const override { return true; }
  bool notifies_peers() const override { return false; }
  Status send_notification(const std::string& agent, std::string_view message) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "POSIX backend notifies only its own agent '",
                 env_.agent_name, "', not '", agent, "'");
    }
    if (env_.on_notification) env_.on_notification({agent, std::string(message)});
    return {};
  }

  size_t progress(LockWait) override { return 0; }  // the worker thread does the I/O

  // Each request is a group of the worker's ring: requests posted while others run join
  // one queue that never drains between them, and each ends as soon as its own ops have.
  Status submit(const std::shared_ptr<PosixJob>& job) {
    job->state.store(XferState::InProgress, std::memory_order_release);
    job->ticket.store(worker_->submit(job->ops, [this, job](Status st) { finish(*job, st); }),
                      std::memory_order_release);
    return {};
  }

  // Takes `job` out of the queue, or waits until the worker has finished running it.
  void cancel(PosixJob* job) { worker_->cancel(job->ticket.load(std::memory_order_acquire)); }

 private:
  void finish(PosixJob& job, const Status& st) {
    if (st && job.notification && env_.on_notification) {
      env_.on_notification({env_.agent_name, *job.notification});
    }
    if (st) {
      job.state.store(XferState::Done, std::memory_order_release);
    } else {
      job.error = err(st.code(), "POSIX ", st.error().message);
      job.state.store(XferState::Error, std::memory_order_release);
    }
    if (env_.on_completion) env_.on_completion();
  }

  const std::string name_ = kName;
  BackendEnv env_;
  std::unique_ptr<UringWorker> worker_;  // its Dones reach finish() until it is destroyed
  const bool fixed_buffers_;
};

PosixRequest::~PosixRequest() {
  backend_->cancel(job_.get());
}

Status PosixRequest::post() {
  // As an I/O error would: the request ends in Error, and wait() says why.
  for (const PosixJob::FileCheck& f : job_->files) {
    if (auto st = check_file_id(f.id, static_cast<uint64_t>(f.fd), f.offset, f.len); !st) {
      job_->error = err(ErrorCode::Io, "POSIX ", st.error().message);
      job_->state.store(XferState::Error, std::memory_order_release);
      return {};
    }
  }
  return backend_->submit(job_);
}

}  // namespace

Result<std::unique_ptr<Backend>> make_posix_backend(const BackendEnv& env,
                                                    const BackendParams& params) {
  KVBM_TRY(check_param_keys("POSIX", params, {"queue_depth", "fixed_buffers"}));
  auto depth = number_param("POSIX", params, "queue_depth", 64, 1, 4096);
  if (!depth) return depth.error();
  // fixed_buffers=0 keeps registered DRAM out of the ring's fixed buffers (they pin it).
  auto fixed = number_param("POSIX", params, "fixed_buffers", 1, 0, 1);
  if (!fixed) return fixed.error();
  auto worker = UringWorker::create(static_cast<unsigned>(*depth));
  if (!worker) return worker.error();
  return std::unique_ptr<Backend>(
      std::make_unique<PosixBackend>(env, std::move(*worker), *fixed == 1));
}

}  // namespace kvbm::xfer::detail
