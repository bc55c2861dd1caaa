#include "xfer/backends/gds/gds_backend.h"

#include <climits>

#if KVBM_HAVE_CUDA
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "common/cuda_util.h"
#include "common/task_pool.h"
#include "common/uring_batch.h"
#include "copy/staging.h"
#include "kvbm/log.h"
#include "xfer/backend_params.h"
#endif

namespace kvbm::xfer::detail {

#if !KVBM_HAVE_CUDA

Result<std::unique_ptr<Backend>> make_gds_backend(const BackendEnv&, const BackendParams&) {
  return err(ErrorCode::DeviceUnavailable, "GDS backend: kvbm was built without CUDA");
}
std::string gds_path(const Backend&) {
  return {};
}

#else

namespace {

using kvbm::detail::FileOp;
using kvbm::detail::StagedPiece;
using kvbm::detail::StagingBatcher;
using kvbm::detail::StagingBuffer;
using kvbm::detail::UringBatch;

// The few cuFile declarations we use, from the public cufile.h API (never included: the
// header and library are optional at build and run time).
namespace cufile {
struct Error {
  int err;     // CUfileOpError; 0 is CU_FILE_SUCCESS
  int cu_err;  // CUresult
};
using Handle = void*;
struct Descr {
  int type;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1
  union {
    int fd;
    void* handle;
  } handle;
  const void* fs_ops;
};
constexpr int kHandleTypeOpaqueFd = 1;

struct Api {
  void* lib = nullptr;
  Error (*driver_open)() = nullptr;
  Error (*driver_close)() = nullptr;
  Error (*handle_register)(Handle*, Descr*) = nullptr;
  void (*handle_deregister)(Handle) = nullptr;
  Error (*buf_register)(const void*, size_t, int) = nullptr;
  Error (*buf_deregister)(const void*) = nullptr;
  ssize_t (*read)(Handle, void*, size_t, off_t, off_t) = nullptr;
  ssize_t (*write)(Handle, const void*, size_t, off_t, off_t) = nullptr;
};

// Opens libcufile and its driver once per process; the reason it could not, otherwise.
Result<const Api*> open_api() {
  static Api api;
  static std::optional<Error> failure;
  static std::string why;
  static std::once_flag once;
  std::call_once(once, [] {
    api.lib = ::dlopen("libcufile.so.0", RTLD_NOW | RTLD_LOCAL);
    if (api.lib == nullptr) {
      const char* e = ::dlerror();
      why = std::string("dlopen(libcufile.so.0): ") + (e ? e : "unknown error");
      return;
    }
    auto sym = [](const char* name) { return ::dlsym(api.lib, name); };
    api.driver_open = reinterpret_cast<decltype(api.driver_open)>(sym("cuFileDriverOpen"));
    void* close = sym("cuFileDriverClose_v2");
    if (close == nullptr) close = sym("cuFileDriverClose");
    api.driver_close = reinterpret_cast<decltype(api.driver_close)>(close);
    api.handle_register =
        reinterpret_cast<decltype(api.handle_register)>(sym("cuFileHandleRegister"));
    api.handle_deregister =
        reinterpret_cast<decltype(api.handle_deregister)>(sym("cuFileHandleDeregister"));
    api.buf_register = reinterpret_cast<decltype(api.buf_register)>(sym("cuFileBufRegister"));
    api.buf_deregister = reinterpret_cast<decltype(api.buf_deregister)>(sym("cuFileBufDeregister"));
    api.read = reinterpret_cast<decltype(api.read)>(sym("cuFileRead"));
    api.write = reinterpret_cast<decltype(api.write)>(sym("cuFileWrite"));
    if (!api.driver_open || !api.handle_register || !api.handle_deregister || !api.buf_register ||
        !api.buf_deregister || !api.read || !api.write) {
      why = "libcufile.so.0 lacks a cuFile symbol";
      return;
    }
    const Error e = api.driver_open();
    if (e.err != 0) {
      why = "cuFileDriverOpen failed: cuFile error " + std::to_string(e.err) + ", CUresult " +
            std::to_string(e.cu_err);
      return;
    }
    // The driver stays open for the process: cuFile state is process-wide.
  });
  if (!why.empty()) return err(ErrorCode::Unsupported, why);
  return &api;
}

}  // namespace cufile

constexpr uint64_t kAlign = 4096;
// cuFile pieces are cut into slices of this size so that a large one is in flight on
// several threads.
constexpr uint64_t kCuFileSlice = 4 << 20;

// A cuFile handle of a file, shared by its FILE region and the loopback view of it;
// deregistered once, when the last of them lets go.
struct FileHandle {
  FileHandle(const cufile::Api* a, cufile::Handle h) : api(a), fh(h) {}
  FileHandle(const FileHandle&) = delete;  // a copy would deregister the handle twice
  FileHandle& operator=(const FileHandle&) = delete;
  ~FileHandle() { api->handle_deregister(fh); }
  const cufile::Api* api;
  cufile::Handle fh;
};

class GdsLocalRegion final : public LocalRegion {
 public:
  GdsLocalRegion(MemType t, Desc d, const cufile::Api* api, std::shared_ptr<FileHandle> fh,
                 bool buf_reg)
      : type(t), desc(d), api_(api), file(std::move(fh)), buf_registered_(buf_reg) {}
  ~GdsLocalRegion() override {
    if (buf_registered_) {
      const cufile::Error e = api_->buf_deregister(reinterpret_cast<const void*>(desc.addr));
      if (e.err != 0) log(LogLevel::Error, "cuFileBufDeregister failed: " + std::to_string(e.err));
    }
  }
  std::string remote_info() const override { return {}; }
  // The base address cuFile knows this VRAM region by, or 0 when it is not registered
  // with cuFile (then cuFile bounces it through its own buffers).
  uint64_t cufile_base() const { return buf_registered_ ? desc.addr : 0; }
  const MemType type;
  const Desc desc;

 private:
  const cufile::Api* api_;

 public:
  const std::shared_ptr<FileHandle> file;  // FILE regions on the cuFile path

 private:
  bool buf_registered_;
};

class GdsRemoteRegion final : public RemoteRegion {
 public:
  GdsRemoteRegion(MemType t, Desc d, std::shared_ptr<FileHandle> fh)
      : type(t), desc(d), file(std::move(fh)) {}
  const MemType type;
  const Desc desc;
  const std::shared_ptr<FileHandle> file;
};

struct Piece {
  bool to_file;  // VRAM -> file (else file -> VRAM)
  int fd;
  uint64_t file_off;
  uint64_t dev_addr;
  uint64_t len;
  int device;
  cufile::Handle fh;  // null: bounce
  // cuFile: the buffer's registered base (I/O names it and the offset from it), else dev_addr.
  uint64_t dev_base;
};

struct Job {
  std::vector<Piece> pieces;
  uint64_t bounce_bytes = 0;  // staging the bounced pieces take
  std::optional<std::string> notification;
  std::atomic<XferState> state{XferState::Idle};
  Error error{ErrorCode::Internal, "no error"};
};

class GdsBackend;

class GdsRequest final : public BackendRequest {
 public:
  GdsRequest(GdsBackend* b, std::shared_ptr<Job> job) : backend_(b), job_(std::move(job)) {}
  ~GdsRequest() override;
  Status post() override;
  XferState poll() override { return job_->state.load(std::memory_order_acquire); }
  Error error() const override { return job_->error; }

 private:
  GdsBackend* backend_;
  std::shared_ptr<Job> job_;
};

class GdsBackend final : public Backend {
 public:
  GdsBackend(BackendEnv env, const cufile::Api* api, bool require_cufile, size_t cufile_threads,
             std::unique_ptr<UringBatch> batch, StagingBuffer staging)
      : env_(std::move(env)),
        api_(api),
        require_cufile_(require_cufile),
        cufile_pool_(api ? cufile_threads - 1 : 0),  // the worker is one of them
        batch_(std::move(batch)),
        staging_(std::move(staging)),
        staging_bytes_(staging_.size()) {
    worker_ = std::thread([this] { work(); });
  }
  ~GdsBackend() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  const char* path() const { return api_ ? "cufile" : "bounce"; }

  const std::string& name() const override { return name_; }
  bool can_register(MemType t) const override { return t == MemType::Vram || t == MemType::File; }
  bool supports(MemType l, MemType r) const override {
    return (l == MemType::Vram && r == MemType::File) || (l == MemType::File && r == MemType::Vram);
  }
  std::string connection_info() const override { return {}; }

  Result<std::unique_ptr<LocalRegion>> register_region(MemType t, const Desc& d) override {
    if (!can_register(t)) {
      return err(ErrorCode::Unsupported, "GDS backend does not register ", to_string(t));
    }
    std::shared_ptr<FileHandle> file;
    bool buf_reg = false;
    if (t == MemType::File) {
      if (d.dev_id > static_cast<uint64_t>(INT_MAX) ||
          ::fcntl(static_cast<int>(d.dev_id), F_GETFD) < 0) {
        return err(ErrorCode::InvalidArgument, "FILE region fd ", d.dev_id, " is not open");
      }
      if (api_ != nullptr) {
        cufile::Descr descr{};
        descr.type = cufile::kHandleTypeOpaqueFd;
        descr.handle.fd = static_cast<int>(d.dev_id);
        cufile::Handle fh = nullptr;
        const cufile::Error e = api_->handle_register(&fh, &descr);
        if (e.err != 0 && require_cufile_) {
          return err(ErrorCode::RegistrationFailed, "cuFileHandleRegister(fd ", d.dev_id,
                     "): cuFile error ", e.err, ", CUresult ", e.cu_err);
        }
        if (e.err != 0) {
          // mode=auto: a file system cuFile does not take (tmpfs, overlay) uses the bounce path.
          log(LogLevel::Info, "cuFileHandleRegister(fd " + std::to_string(d.dev_id) +
                                  ") failed (cuFile error " + std::to_string(e.err) +
                                  "): this file moves through pinned bounce buffers");
        } else {
          file = std::make_shared<FileHandle>(api_, fh);
          std::lock_guard<std::mutex> lock(mu_);
          handles_[RegionKey{d.dev_id, d.addr}] = file;
        }
      }
    } else {
      KVBM_TRY(kvbm::detail::check_device(static_cast<int>(d.dev_id)));
      if (api_ != nullptr) {
        // Optional for cuFile (unregistered buffers are bounced inside cuFile): log, go on.
        const cufile::Error e = api_->buf_register(reinterpret_cast<const void*>(d.addr), d.len, 0);
        buf_reg = e.err == 0;
        if (!buf_reg) {
          log(LogLevel::Info, "cuFileBufRegister(" + std::to_string(d.len) +
                                  " bytes) failed: cuFile error " + std::to_string(e.err));
        }
      }
    }
    return std::unique_ptr<LocalRegion>(
        std::make_unique<GdsLocalRegion>(t, d, api_, std::move(file), buf_reg));
  }

  Status connect(const std::string&, std::string_view) override { return {}; }
  void disconnect(const std::string&) override {}
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string& agent, MemType t,
                                                           const Desc& d,
                                                           std::string_view) override {
    if (!can_register(t)) {
      return err(ErrorCode::Unsupported, "GDS backend has no ", to_string(t), " regions");
    }
    std::shared_ptr<FileHandle> file;
    if (t == MemType::File && agent == env_.agent_name) {  // the loopback view of our file
      std::lock_guard<std::mutex> lock(mu_);
      auto it = handles_.find(RegionKey{d.dev_id, d.addr});
      if (it != handles_.end()) file = it->second.lock();
    }
    return std::unique_ptr<RemoteRegion>(std::make_unique<GdsRemoteRegion>(t, d, std::move(file)));
  }

  Result<std::unique_ptr<BackendRequest>> prepare(Op op, const std::string& agent,
                                                  std::vector<Segment> segments,
                                                  std::optional<std::string> notif) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "GDS backend of agent '", env_.agent_name,
                 "' moves only its own files, not those of agent '", agent, "'");
    }
    auto job = std::make_shared<Job>();
    job->notification = std::move(notif);
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& s = segments[i];
      auto* l = static_cast<GdsLocalRegion*>(s.local_region);
      auto* r = static_cast<GdsRemoteRegion*>(s.remote_region);
      if (!supports(l->type, r->type)) {
        return err(ErrorCode::Unsupported, "GDS backend: segment ", i, " is ", to_string(l->type),
                   " <-> ", to_string(r->type), "; only VRAM <-> FILE");
      }
      const bool remote_is_file = r->type == MemType::File;
      const Desc& file = remote_is_file ? s.remote : s.local;
      const Desc& mem = remote_is_file ? s.local : s.remote;
      const bool file_read = (op == Op::Read) == remote_is_file;
      const auto& fh = remote_is_file ? r->file : l->file;
      const uint64_t base = remote_is_file ? l->cufile_base() : 0;
      job->pieces.push_back({!file_read, static_cast<int>(file.dev_id), file.addr, mem.addr,
                             file.len, static_cast<int>(mem.dev_id), fh ? fh->fh : nullptr,
                             base != 0 ? base : mem.addr});
      if (!fh) job->bounce_bytes += (file.len + kAlign - 1) / kAlign * kAlign;
    }
    return std::unique_ptr<BackendRequest>(std::make_unique<GdsRequest>(this, std::move(job)));
  }

  bool supports_notifications() const override { return true; }
  bool notifies_peers() const override { return false; }
  Status send_notification(const std::string& agent, std::string_view message) override {
    if (agent != env_.agent_name) {
      return err(ErrorCode::Unsupported, "GDS backend notifies only its own agent");
    }
    if (env_.on_notification) env_.on_notification({agent, std::string(message)});
    return {};
  }
  size_t progress(LockWait) override { return 0; }

  Status submit(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job->state.store(XferState::InProgress, std::memory_order_release);
      queue_.push_back(job);
    }
    cv_.notify_one();
    return {};
  }
  void cancel(Job* job) {
    std::unique_lock<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      it = it->get() == job ? queue_.erase(it) : std::next(it);
    }
    done_cv_.wait(lock, [&] {
      return std::none_of(running_.begin(), running_.end(),
                          [&](const std::shared_ptr<Job>& r) { return r.get() == job; });
    });
  }

 private:
  Status run_cufile(const Piece& p) {
    kvbm::detail::DeviceGuard guard(p.device);
    uint64_t done = 0;
    void* base = reinterpret_cast<void*>(p.dev_base);
    while (done < p.len) {
      const auto dev_off = off_t(p.dev_addr - p.dev_base + done);
      const auto file_off = off_t(p.file_off + done);
      const ssize_t n = p.to_file ? api_->write(p.fh, base, p.len - done, file_off, dev_off)
                                  : api_->read(p.fh, base, p.len - done, file_off, dev_off);
      if (n < 0) {
        // -1 with errno, or minus a cuFile error code; cuFile also puts its codes (5000 and
        // up) in errno.
        const int code = n == -1 ? errno : static_cast<int>(-n);
        const std::string why = code >= 5000 ? "cuFile error " + std::to_string(code)
                                             : std::string(std::strerror(code));
        return err(ErrorCode::Io, p.to_file ? "cuFileWrite" : "cuFileRead", " fd ", p.fd,
                   " offset ", p.file_off, " len ", p.len, ": ", why);
      }
      if (n == 0) {
        return err(ErrorCode::Io, "cuFileRead fd ", p.fd, " offset ", p.file_off, " len ", p.len,
                   ": read past end of file at offset ", p.file_off + done);
      }
      done += static_cast<uint64_t>(n);
    }
    return {};
  }

  // Bounce: pack pieces (split at staging size) into the pinned buffer, each on a page and
  // each batch filled (copy/staging.h), so one io_uring run and one stream sync serve many
  // pieces. A batch moves one way: each run of pieces of one direction is batched alone.
  Status run_bounce(const std::vector<Piece>& pieces) {
    std::vector<Chunk> chunks;  // file offset -> device address; both regions: the piece
    std::vector<StagedPiece> batch;
    std::vector<FileOp> ops;
    for (size_t first = 0, end = 0; first < pieces.size(); first = end) {
      const bool to_file = pieces[first].to_file;
      chunks.clear();
      for (end = first; end < pieces.size() && pieces[end].to_file == to_file; ++end) {
        const Piece& p = pieces[end];
        const auto i = static_cast<uint32_t>(end);
        if (p.len > 0) chunks.push_back({p.file_off, p.dev_addr, p.len, i, i});
      }
      StagingBatcher batches(chunks, staging_bytes_, true, false,
                             {.always_page = true, .fill = true});
      while (batches.next(batch)) KVBM_TRY(bounce_batch(pieces, batch, to_file, ops));
    }
    return {};
  }

  // One batch: file -> staging -> GPU, or GPU -> staging -> file.
  Status bounce_batch(const std::vector<Piece>& pieces, const std::vector<StagedPiece>& batch,
                      bool to_file, std::vector<FileOp>& ops) {
    ops.clear();
    for (const StagedPiece& s : batch) {
      ops.push_back({to_file ? FileOp::Kind::Write : FileOp::Kind::Read, pieces[s.src_region].fd,
                     s.src, staging_.data() + s.stage, s.len});
    }
    if (!to_file) KVBM_TRY(batch_->run(ops));
    for (const StagedPiece& s : batch) {
      kvbm::detail::DeviceGuard guard(pieces[s.src_region].device);
      char* host = staging_.data() + s.stage;
      auto* dev = reinterpret_cast<void*>(s.dst);
      const cudaError_t e = to_file ? cudaMemcpy(host, dev, s.len, cudaMemcpyDeviceToHost)
                                    : cudaMemcpy(dev, host, s.len, cudaMemcpyHostToDevice);
      if (e != cudaSuccess) {
        return kvbm::detail::cuda_error(ErrorCode::Io, e,
                                        to_file ? "GDS bounce D2H" : "GDS bounce H2D");
      }
    }
    if (to_file) KVBM_TRY(batch_->run(ops));
    return {};
  }

  // Runs the cuFile pieces of the group's jobs, cut into slices of at most kCuFileSlice,
  // cufile_threads at a time: cuFileRead/Write block, so one at a time would leave the disk
  // (and, in compat mode, cuFile's own host bounce) idle between calls. A job's first
  // failing slice is its error.
  void run_cufile_pieces(std::vector<Status>& results) {
    struct Slice {
      size_t job;
      Piece piece;
    };
    std::vector<Slice> slices;
    for (size_t i = 0; i < running_.size(); ++i) {
      for (const Piece& p : running_[i]->pieces) {
        if (p.fh == nullptr) continue;
        for (uint64_t off = 0; off < p.len; off += kCuFileSlice) {
          Piece part = p;
          part.file_off += off;
          part.dev_addr += off;
          part.len = std::min(kCuFileSlice, p.len - off);
          slices.push_back({i, part});
        }
      }
    }
    std::vector<Status> out(slices.size());
    cufile_pool_.run(slices.size(), [&](size_t k) { out[k] = run_cufile(slices[k].piece); });
    for (size_t k = 0; k < slices.size(); ++k) {
      Status& r = results[slices[k].job];
      if (r && !out[k]) r = out[k];
    }
  }

  // The bounced pieces of the jobs in `which`.
  std::vector<Piece> bounced(const std::vector<size_t>& which) const {
    std::vector<Piece> out;
    for (size_t i : which) {
      for (const Piece& p : running_[i]->pieces) {
        if (p.fh == nullptr) out.push_back(p);
      }
    }
    return out;
  }

  // Takes every queued job whose bounced bytes still fit the staging buffer, so that one
  // io_uring run keeps many of them in flight (a job per run would leave the disk at
  // queue depth 1). A group whose bounce fails is re-run job by job, so that each request
  // gets its own outcome; a job whose cuFile part failed does not bounce its other pieces.
  void work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      uint64_t bytes = 0;
      do {
        bytes += queue_.front()->bounce_bytes;
        running_.push_back(queue_.front());
        queue_.pop_front();
      } while (!queue_.empty() && bytes + queue_.front()->bounce_bytes <= staging_bytes_);
      lock.unlock();
      std::vector<Status> results(running_.size());
      run_cufile_pieces(results);
      std::vector<size_t> ok;
      for (size_t i = 0; i < running_.size(); ++i) {
        if (results[i]) ok.push_back(i);
      }
      if (Status st = run_bounce(bounced(ok)); !st) {
        if (ok.size() == 1) {
          results[ok[0]] = st;
        } else {
          for (size_t i : ok) results[i] = run_bounce(bounced({i}));
        }
      }
      for (size_t i = 0; i < running_.size(); ++i) {
        Job& job = *running_[i];
        const Status& st = results[i];
        if (st && job.notification && env_.on_notification) {
          env_.on_notification({env_.agent_name, *job.notification});
        }
        if (st) {
          job.state.store(XferState::Done, std::memory_order_release);
        } else {
          job.error = err(st.code(), "GDS (", path(), ") ", st.error().message);
          job.state.store(XferState::Error, std::memory_order_release);
        }
      }
      lock.lock();
      running_.clear();
      done_cv_.notify_all();
      lock.unlock();
      if (env_.on_completion) env_.on_completion();
      lock.lock();
    }
  }

  const std::string name_ = "GDS";
  BackendEnv env_;
  const cufile::Api* api_;              // null: bounce path
  const bool require_cufile_;           // mode=cufile: a file cuFile refuses is an error
  kvbm::detail::TaskPool cufile_pool_;  // worker only: runs cuFile slices side by side
  std::unique_ptr<UringBatch> batch_;   // worker only
  StagingBuffer staging_;               // pinned, worker only; a fixed buffer of batch_
  const size_t staging_bytes_;

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;  // the worker's current group
  // FILE regions' cuFile handles by (fd, offset), for their loopback views.
  using RegionKey = std::pair<uint64_t, uint64_t>;
  std::map<RegionKey, std::weak_ptr<FileHandle>> handles_;
  bool stop_ = false;
  std::thread worker_;
};

GdsRequest::~GdsRequest() {
  backend_->cancel(job_.get());
}
Status GdsRequest::post() {
  return backend_->submit(job_);
}

}  // namespace

Result<std::unique_ptr<Backend>> make_gds_backend(const BackendEnv& env,
                                                  const BackendParams& params) {
  KVBM_TRY(
      check_param_keys("GDS", params, {"mode", "queue_depth", "bounce_bytes", "cufile_threads"}));
  std::string mode = "auto";
  if (auto it = params.find("mode"); it != params.end()) {
    if (it->second != "auto" && it->second != "cufile" && it->second != "bounce") {
      return err(ErrorCode::InvalidArgument, "GDS mode '", it->second,
                 "' is not one of auto, cufile, bounce");
    }
    mode = it->second;
  }
  auto depth = number_param("GDS", params, "queue_depth", 64, 1, 4096);
  auto bounce = number_param("GDS", params, "bounce_bytes", 16 << 20, 1 << 20, uint64_t{1} << 32);
  auto cufile_threads = number_param("GDS", params, "cufile_threads", 8, 1, 64);
  for (const auto* v : {&depth, &bounce, &cufile_threads}) {
    if (!*v) return v->error();
  }
  const uint64_t bounce_bytes = (*bounce + kAlign - 1) / kAlign * kAlign;
  if (auto st = kvbm::detail::check_device(0); !st) {
    return err(ErrorCode::DeviceUnavailable, "GDS backend needs a GPU: ", st.error().message);
  }
  const cufile::Api* api = nullptr;
  std::string why;
  if (mode != "bounce") {
    auto opened = cufile::open_api();
    if (opened) {
      api = *opened;
    } else if (mode == "cufile") {
      return opened.error();
    } else {
      why = opened.error().message;
    }
  } else {
    why = "mode=bounce";
  }
  auto batch = UringBatch::create(static_cast<unsigned>(*depth));
  if (!batch) return batch.error();
  auto staging = StagingBuffer::allocate(**batch, bounce_bytes, true);
  if (!staging) {
    return err(staging.error().code, "GDS staging of ", bounce_bytes,
               " bytes: ", staging.error().message);
  }
  log(LogLevel::Info, "GDS backend of agent '" + env.agent_name + "' uses " +
                          (api ? std::string("cuFile") : "pinned bounce buffers (" + why + ")"));
  return std::unique_ptr<Backend>(std::make_unique<GdsBackend>(
      env, api, mode == "cufile", *cufile_threads, std::move(*batch), std::move(*staging)));
}

std::string gds_path(const Backend& backend) {
  const auto* g = dynamic_cast<const GdsBackend*>(&backend);
  return g ? g->path() : std::string();
}

#endif  // KVBM_HAVE_CUDA

}  // namespace kvbm::xfer::detail
