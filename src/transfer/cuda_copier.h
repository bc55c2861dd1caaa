// The CUDA path of the transfer engine: one stream on one GPU, and a ring of chunk tables
// (pinned host + device copies, reused across requests, grown only when a request needs
// more) so that a request costs one table upload and one kernel launch. Completion is a
// CUDA event per table slot. Thread-safe.
#pragma once

#include <memory>
#include <span>

#include "kvbm/result.h"
#include "kvbm/transfer.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class CudaCopier {
 public:
  // DeviceUnavailable without a GPU (or a CUDA build); CUDA's error otherwise.
  static Result<std::unique_ptr<CudaCopier>> create(int ordinal,
                                                    const TransferEngineOptions& options);
  ~CudaCopier();

  int ordinal() const;
  // Whether kernels on this GPU can read and write pageable host memory (HMM/ATS).
  bool pageable_access() const;

  // Starts the copy of `chunks` (device pointers or host pointers the GPU can address).
  // use_kernel: one kernel launch; otherwise one cudaMemcpyAsync per chunk (pageable
  // memory the GPU cannot address).
  Result<std::unique_ptr<Transfer::Impl>> submit(std::span<const Chunk> chunks, uint64_t bytes,
                                                 bool use_kernel);

  struct State;

 private:
  explicit CudaCopier(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvbm::detail
