// The transfer (block) layer, over the xfer (agent) layer for remote layouts (words:
// docs/glossary.md).
//
// Block transfers: copy a list of blocks (src_ids[i] -> dst_ids[i]) between two layouts with
// the same blocks (layers, outer_dim, page_size, inner_dim, dtype_bytes; kind, order,
// alignment and num_blocks may differ) on any two tiers. The engine chooses the path:
//   Host      System/Pinned <-> System/Pinned: memcpy split across a persistent thread pool
//             (a request of 4096 chunks or more in ranges of blocks, each thread working
//             out the chunks of its own range).
//   Cuda      any pair with Device memory: ONE gather/scatter kernel launch per request over
//             a table of (src, dst, len) chunks (pinned host memory read directly by the
//             kernel); System memory is copied by the kernel where the GPU can address
//             pageable memory, otherwise by one cudaMemcpyAsync per coalesced chunk.
//   File      Disk <-> System/Pinned: one batched io_uring submission per request (host
//             layouts given to register_host_layout() go as fixed buffers of that ring).
//   Staged    Disk <-> Disk and Disk <-> Device: through a host staging buffer the engine
//             owns (TransferEngineOptions::staging_bytes; pinned once a Device is
//             involved), in batches that fit half of it (larger chunks are split): io_uring
//             reads, or the GPU's copies out (one cudaMemcpyAsync per chunk), fill one half
//             while the previous batch drains from the other (io_uring writes, or copies to
//             the GPU). Staged requests run one at a time, in order, on one engine thread,
//             since they share the buffer.
//   Remote    a local layout <-> a peer's layout (Layout::from_bytes): one agent request
//             with all chunks as descriptors, optionally with a notification for the peer.
// Chunks that are adjacent on both sides are coalesced (whole blocks of two fully
// contiguous layouts move as one chunk).
//
// Ownership: the engine outlives its Transfers; the layouts must outlive each Transfer that
// reads or writes them. Thread safety: TransferEngine::copy may be called from many threads
// at once; a Transfer may be used from one thread at a time.
#pragma once

#include "kvbm/export.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "kvbm/layout.h"
#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"

namespace kvbm {

/// How a copy goes: host memcpy threads, the CUDA copy kernel or copy engines, io_uring to
/// files, an agent to a peer, or disk -> GPU staged through pinned memory.
enum class TransferPath : uint8_t { Host, Cuda, File, Remote, Staged };
KVBM_API const char* to_string(TransferPath path);

namespace detail {
struct CudaTuning;  ///< the Cuda path's kernel tuning knobs (internal: src/transfer/cuda_tuning.h)
}  // namespace detail

/// How the Cuda path moves blocks between pinned host memory and a GPU. Which is faster
/// differs between machines and drivers, so by default (Auto) it is measured on the machine:
/// the first copy between pinned memory and a GPU times each over scattered chunks of each
/// size class (up to 16 KiB, 64 KiB, 256 KiB, larger) and direction, and the fastest is kept
/// for that GPU. VRAM <-> VRAM copies always use the kernel.
///   Kernel  the block copy kernel reads or writes the mapped pinned memory itself.
///   Batch   the GPU's copy engines, the coalesced chunks through cudaMemcpyBatchAsync.
///   Split   both at once on disjoint blocks of a request: the kernel takes a share (its
///           measured part of the two engines' sum), the copy engines the rest.
///   Gather  host -> GPU only (GPU -> host copies forced to it use the kernel): the
///           engine's host threads gather the chunks into a pinned staging buffer, one DMA
///           per slice of it moves them, a kernel scatters them on the GPU. Where Auto
///           measured it faster so, the kernel copies a share of the blocks beside it (as in
///           Split). copy() returns once the CPU has read the sources; it holds 48 MiB of
///           pinned and of device memory per GPU from its first use on (a measurement that
///           does not choose it frees them).
enum class CudaHostEngine : uint8_t { Auto, Kernel, Batch, Split, Gather };
KVBM_API const char* to_string(CudaHostEngine engine);

/// An asynchronous copy. Destroying one that is still running waits for it (Host, Cuda,
/// File, Staged) or cancels it (Remote), so memory is never written after the handle is gone.
class KVBM_API Transfer {
 public:
  class Impl;
  /// Made by TransferEngine::copy.
  explicit Transfer(std::unique_ptr<Impl> impl);
  /// Takes `other`'s copy.
  Transfer(Transfer&&) noexcept;
  /// Finishes (waits for or cancels) this handle's copy, then takes `other`'s.
  Transfer& operator=(Transfer&&) noexcept;
  ~Transfer();

  /// True once the copy finished, successfully or not. Never blocks.
  bool ready();
  /// Waits until finished and returns its outcome; Timeout if it has not finished within
  /// `timeout` (it keeps running and can be waited on again).
  Status wait(std::chrono::milliseconds timeout = std::chrono::hours(24));

  /// The path the copy takes.
  TransferPath path() const;
  uint64_t bytes() const;  ///< payload of the request
  /// Contiguous ranges after coalescing; on the GPU kernel path (which computes addresses
  /// per chunk on the GPU) every (block, layer, outer) chunk; on the host path, for a request
  /// of 4096 chunks or more, the ranges its parts copied (each part coalesces its own
  /// blocks), known once finished.
  size_t chunks() const;

 private:
  std::unique_ptr<Impl> impl_;
};

/// What TransferEngine::create builds.
struct KVBM_API TransferEngineOptions {
  size_t host_threads = 0;          ///< host memcpy pool (0: every core)
  unsigned uring_queue_depth = 64;  ///< the File path's io_uring entries
  /// The Cuda path's kernel tuning, for benchmarks and tests (internal); null: defaults.
  std::shared_ptr<const detail::CudaTuning> cuda_tuning{};
  /// Pinned host memory <-> GPU: measured per GPU (Auto), or forced.
  CudaHostEngine cuda_host_engine = CudaHostEngine::Auto;
  /// The Staged path's host buffer, allocated on first use and kept: a positive multiple
  /// of 8192 (two halves of whole pages), at most 64 GiB. Larger requests go in batches.
  size_t staging_bytes = 64 << 20;
};

/// Options of one TransferEngine::copy.
struct KVBM_API CopyOptions {
  /// Required when either layout is remote: the agent the local layout is registered with.
  xfer::Agent* agent = nullptr;
  /// Remote path: delivered to the peer once the data is visible there.
  std::optional<std::string> notification;
};

/// Copies blocks between layouts on any pair of tiers (and to and from peers' layouts),
/// choosing the path by the tiers. Thread-safe: copies may be started from many threads.
class KVBM_API TransferEngine {
 public:
  /// InvalidArgument for host_threads over 1024, a zero queue depth or kernel shape, an
  /// unknown kernel, or a staging_bytes that is zero, not a multiple of 8192 or over 64 GiB.
  static Result<std::unique_ptr<TransferEngine>> create(TransferEngineOptions options = {});
  ~TransferEngine();

  /// Starts copying blocks src_ids[i] of `src` into dst_ids[i] of `dst`. Errors before
  /// anything moves: InvalidArgument for lists of different lengths, an empty list, a
  /// duplicate destination id, layouts whose blocks differ (layers, outer, page, inner,
  /// dtype), two
  /// remote layouts, a remote copy without an agent, the same local layout as source and
  /// destination of an overlapping block; OutOfBounds naming a block id and num_blocks;
  /// Unsupported for a tier pair with no path (Device <-> Device on two GPUs)
  /// and DeviceUnavailable for GPU memory without a usable GPU. Errors while copying (an
  /// I/O error, a read past the end of a file, a CUDA error) come back from Transfer::wait.
  Result<Transfer> copy(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                        std::span<const size_t> dst_ids, const CopyOptions& options = {});

  /// The path copy() would take for this pair of layouts, or why there is none.
  Result<TransferPath> path_for(const Layout& src, const Layout& dst) const;

  /// Registers the host memory of `layout` (System or Pinned) with the File path: its
  /// io_uring takes each region as a fixed buffer, so that copies between it and a Disk
  /// layout skip pinning the pages on every I/O (CPU time per request, BENCHMARKS.md).
  /// Optional: copies work without it. Each region keeps the
  /// registration under kFileRegistrationKey until it is destroyed or deregistered, or until the
  /// engine goes, whichever comes first. Errors: InvalidArgument for a layout that is not local
  /// host memory; AlreadyRegistered when a region has the key already (from this engine or
  /// another); Io when the File path's io_uring cannot be made. Where the kernel refuses fixed
  /// buffers (no CAP_IPC_LOCK and a low RLIMIT_MEMLOCK, a kernel before 5.19) it returns ok and
  /// logs it once: copies go as without it. Not thread-safe for the layout (its regions'
  /// registration maps): register before sharing the layout between threads.
  Status register_host_layout(Layout& layout);
  /// The registration key register_host_layout() uses.
  static constexpr const char* kFileRegistrationKey = "kvbm.transfer.file";
  /// I/O submissions of the File path that went from or to a registered region, so far.
  uint64_t file_fixed_ios() const;

  /// The host path's memcpy threads.
  size_t host_threads() const;

  /// The engine the Cuda path uses on GPU `ordinal` between pinned memory and the GPU
  /// (`to_device`: host -> GPU) for coalesced chunks of `chunk_bytes`: the forced one, or
  /// with Auto the measured one (measured now, once per GPU, if not yet done).
  /// DeviceUnavailable without a usable GPU.
  Result<CudaHostEngine> cuda_host_engine(int ordinal, bool to_device, size_t chunk_bytes);

 private:
  struct State;
  explicit TransferEngine(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvbm
