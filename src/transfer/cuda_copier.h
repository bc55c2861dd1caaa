// The CUDA path of the transfer engine: one stream on one GPU, and a ring of block tables
// (pinned host + device copies, reused across requests, grown only when a request needs
// more) so that a request costs one table upload and one kernel launch. Completion is a
// CUDA event per table slot. Thread-safe.
#pragma once

#include <memory>
#include <span>

#include "kvbm/layout.h"
#include "kvbm/result.h"
#include "kvbm/transfer.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class HostPool;

class CudaCopier {
 public:
  // DeviceUnavailable without a GPU (or a CUDA build); CUDA's error otherwise. `pool` (the
  // engine's host threads, which outlive the copier) gathers for CudaHostEngine::Gather.
  static Result<std::unique_ptr<CudaCopier>> create(int ordinal,
                                                    const TransferEngineOptions& options,
                                                    HostPool& pool);
  ~CudaCopier();

  int ordinal() const;
  // Whether kernels on this GPU can read and write pageable host memory (HMM/ATS).
  bool pageable_access() const;

  // Starts the copy of `chunks` with one cudaMemcpyAsync each: for pageable host memory
  // the GPU cannot address, which the kernel cannot read.
  Result<std::unique_ptr<Transfer::Impl>> submit(std::span<const Chunk> chunks, uint64_t bytes);
  // Starts the copy of blocks src_ids[i] -> dst_ids[i] (validated) between two layouts the
  // GPU addresses (device or pinned memory): one kernel computes every chunk's address, so
  // the CPU's work is one table of block ids, not one entry per chunk.
  Result<std::unique_ptr<Transfer::Impl>> submit_blocks(const Layout& src,
                                                        std::span<const size_t> src_ids,
                                                        const Layout& dst,
                                                        std::span<const size_t> dst_ids,
                                                        uint64_t bytes);

  // The engine for copies between pinned memory and this GPU of coalesced chunks of
  // `chunk_bytes` (CudaHostEngine): the forced one, or measured on the first call (for
  // every class and direction at once) and kept.
  CudaHostEngine host_engine(bool to_device, size_t chunk_bytes);
  // Starts the copy of `chunks` between pinned memory and this GPU through
  // cudaMemcpyBatchAsync (host_engines.h: enqueue_batch).
  Result<std::unique_ptr<Transfer::Impl>> submit_batch(std::span<const Chunk> chunks,
                                                       uint64_t bytes);
  // Starts the copy of `chunks` from pinned memory to this GPU through the gather stage
  // (copy/gpu_gather.h, made on first use): returns once the CPU has read every source
  // chunk, the DMAs and scatters queued.
  Result<std::unique_ptr<Transfer::Impl>> submit_gather(std::span<const Chunk> chunks,
                                                        uint64_t bytes);
  // How many of a request's `blocks` the kernel copies beside `engine`'s copy of the rest:
  // Split, the kernel's measured share for this direction and chunk class (at least 1, fewer
  // than `blocks` when there are 2 or more); Gather, its share beside the gather where
  // measured faster together (or forced through the tuning), else 0; Batch, 0.
  size_t kernel_blocks(CudaHostEngine engine, bool to_device, size_t chunk_bytes,
                       size_t blocks) const;
  // Starts the kernel's copy of blocks src_ids[i] -> dst_ids[i] and, at once, `rest`'s copy
  // of `chunks` (the request's other blocks): the copy engines (Split) or, to the GPU, the
  // gather stage (Gather; returns once the CPU has read those chunks), as one request of
  // `bytes`.
  Result<std::unique_ptr<Transfer::Impl>> submit_split(const Layout& src,
                                                       std::span<const size_t> src_ids,
                                                       const Layout& dst,
                                                       std::span<const size_t> dst_ids,
                                                       std::span<const Chunk> chunks,
                                                       uint64_t bytes, CudaHostEngine rest);

  struct State;

 private:
  explicit CudaCopier(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvbm::detail
