// The CUDA backend's class, shared by its units: cuda_backend.cc (the backend: peers,
// streams, prepare, progress, parameters), cuda_regions.cc (local and remote regions),
// cuda_ipc.cc (peers' allocations opened through CUDA IPC), copy_request.cc (copies
// within this process and through IPC), cuda_staged.cc and staged_target.cc (the staged
// path, initiator and target). Not a public interface.
#pragma once

#include <cuda_runtime_api.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kvbm/log.h"
#include "xfer/backend.h"
#include "xfer/backends/cuda/copy_request.h"
#include "xfer/backends/cuda/cuda_common.h"
#include "xfer/backends/cuda/cuda_info.h"
#include "xfer/backends/cuda/cuda_peer.h"
#include "xfer/backends/cuda/staged.h"
#include "xfer/ucx_common/staging_owed.h"
#include "xfer/ucx_common/staging_poll.h"
#include "xfer/ucx_common/ucx_common.h"

namespace kvbm::xfer::detail::cuda {

class CudaBackend final : public Backend {
 public:
  CudaBackend(BackendEnv env, bool force_staged, size_t chunk_bytes, size_t slots, size_t streams,
              bool batch_copies, bool kernel_copies)
      : env_(std::move(env)),
        force_staged_(force_staged),
        chunk_bytes_(chunk_bytes),
        streams_per_device_(streams),
        batch_copies_(batch_copies),
        kernel_copies_(kernel_copies),
        send_pool_(slots, chunk_bytes, slots, pinned_allocator()),
        recv_pool_(slots, chunk_bytes, slots, pinned_allocator()) {}
  ~CudaBackend() override;
  Status init();

  const std::string& name() const override { return name_; }
  bool can_register(MemType type) const override {
    return type == MemType::Vram || type == MemType::Dram;
  }
  bool supports(MemType local, MemType remote) const override {
    return (local == MemType::Vram && (remote == MemType::Vram || remote == MemType::Dram)) ||
           (local == MemType::Dram && remote == MemType::Vram);
  }
  std::string connection_info() const override {
    return CudaConnectionInfo{host_, static_cast<int64_t>(getpid()), address_, chunk_bytes_}
        .encode();
  }
  Result<std::unique_ptr<LocalRegion>> register_region(MemType type, const Desc& region) override;
  Status connect(const std::string& agent, std::string_view connection_info) override;
  void disconnect(const std::string& agent) override;
  Result<std::unique_ptr<RemoteRegion>> load_remote_region(const std::string& agent, MemType type,
                                                           const Desc& region,
                                                           std::string_view remote_info) override;
  Result<std::unique_ptr<BackendRequest>> prepare(Op op, const std::string& agent,
                                                  std::vector<Segment> segments,
                                                  std::optional<std::string> notification) override;
  bool supports_notifications() const override { return false; }
  Status send_notification(const std::string& agent, std::string_view) override {
    return err(ErrorCode::Unsupported, "the CUDA backend carries no notifications (to agent '",
               agent, "'); the agent sends them over UCX");
  }
  size_t progress(LockWait wait) override;

 private:
  // The backend's own units: its requests and regions share its lock and state.
  friend class CudaCopyRequest;
  friend class CudaStagedRequest;
  friend class CudaLocalRegion;
  friend class CudaRemoteRegion;

  // Everything below runs with mu_ held.
  std::mutex mu_;
  cudaStream_t stream(int device);
  Status copy_async(void* dst, const void* src, size_t len, int device, cudaStream_t s,
                    cudaEvent_t* event);
  Result<char*> map_locked(CudaRemoteRegion& r);
  void unmap_locked(CudaRemoteRegion& r);
  void close_peer_locked(const std::shared_ptr<CudaPeer>& peer, Error why);
  // prepare()'s steps: the device a segment's copy runs on; the requests of each path.
  int device_of(const CudaPeer& peer, const Segment& s, const CudaLocalRegion* l,
                const CudaRemoteRegion* r) const;
  Result<std::unique_ptr<BackendRequest>> prepare_copies(Op op, std::shared_ptr<CudaPeer> peer,
                                                         const std::vector<Segment>& segments);
  Result<std::unique_ptr<BackendRequest>> prepare_staged(Op op, std::shared_ptr<CudaPeer> peer,
                                                         const std::vector<Segment>& segments);
  bool local_range_ok(MemType type, uint64_t dev, uint64_t addr, uint64_t len) const;
  Status ensure_pools();
  // Sends a chunk's request (a WRITE's bytes from f's bounce buffer, with f's UCX state).
  void send_request(StagedOp& op, uint64_t seq, Flight* f);
  // Owes `j`'s initiator its answer (sent inside the callback of its next poll): e's
  // text, or success (a READ's bytes from j's bounce buffer, which goes back to its pool
  // once sent).
  void reply(TargetJob& j, const Error* e);
  // Polls the targets that owe our chunks' answers (staging_poll.h paces them); drops
  // what dead initiators left unpolled.
  void poll_due();
  static ucs_status_t on_poll(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  void pump(StagedOp& op);
  bool advance(StagedOp& op, Flight& f);
  void fail_op(StagedOp& op, Error e);
  void handle_incoming(Incoming& in);
  void handle_chunk(Incoming& in);  // kAmRequest: served here (staged_target.cc)
  void handle_reply(Incoming& in);  // kAmReply: to our own chunks
  void receive_reply(StagedOp& op, Flight& f, Incoming& in);  // a READ's bytes
  void drop(Incoming& in);  // releases a rendezvous message's data
  bool advance_job(TargetJob& job);
  bool start_job(TargetJob& j, int dev, void* target);  // advance_job's first step
  void admit_jobs();  // the waiting chunks that find a bounce buffer, to jobs_
  void serve_jobs();  // admit_jobs, then advance_job over jobs_, while buffers come back
  static ucs_status_t on_am(unsigned id, void* arg, const void* header, size_t header_length,
                            void* data, size_t length, const ucp_am_recv_param_t* param);
  template <unsigned Id>
  static ucs_status_t on_am_id(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param) {
    return on_am(Id, arg, header, header_length, data, length, param);
  }

  const std::string name_ = "CUDA";
  BackendEnv env_;
  const bool force_staged_;
  const size_t chunk_bytes_;
  const size_t streams_per_device_;  // requests go round-robin over them
  // A request's copies with a host side go as one cudaMemcpyBatchAsync per device (CUDA
  // 12.8+), not a cudaMemcpyAsync each; off by batch=0, or once the driver refuses it.
  std::atomic<bool> batch_copies_;
  // Several VRAM <-> VRAM copies of a request go as one launch of the copy_list kernel
  // (copy/gpu_copy.h), as do several small ones between VRAM and mapped pinned memory; off by
  // kernel=0.
  const bool kernel_copies_;
  const std::string host_ = host_boot_id();
  int default_device_ = 0;

  std::map<std::tuple<MemType, uint64_t, uint64_t>, std::vector<CudaLocalRegion*>> locals_;
  std::map<std::string, std::shared_ptr<CudaPeer>> peers_;
  std::map<int, std::vector<cudaStream_t>> streams_;
  size_t next_stream_ = 0;

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  staging::Pool send_pool_;    // the initiator's bounce buffers
  staging::Pool recv_pool_;    // the target's
  staging::OwedReplies owed_;  // answers ready, waiting for their initiators' polls
  staging::Outstanding<CudaPeer> outstanding_;  // our chunk requests not yet answered
  staging::Polls polls_;                        // ours, by the peer's token
  uint64_t next_token_ = random_seed();
  bool pools_ready_ = false;
  uint64_t next_op_ = 1;
  std::map<uint64_t, std::shared_ptr<StagedOp>> ops_;
  std::deque<TargetJob> waiting_;  // chunks asked of us, waiting for a bounce buffer
  std::list<TargetJob> jobs_;      // chunks being served (their state must stay put)
  std::vector<Incoming> incoming_;
  FailedEndpoints failed_eps_;  // noted in callbacks, handled in progress()
  size_t events_ = 0;
};

}  // namespace kvbm::xfer::detail::cuda
