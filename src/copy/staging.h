// The host staging of file <-> GPU copies (gpu_copy.h says why src/copy owns local
// copies): a bounce buffer registered with the io_uring ring that moves its file side, and
// the cut of a copy list into batches that each fit it. The transfer engine's Staged path
// (transfer/staged_copier.h: two halves, one filling while the other drains) and the GDS
// backend's bounce path for files cuFile refuses (backends/gds) both stage through these;
// each keeps its own pipeline and its own packing policy (StagingPolicy).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "common/uring_batch.h"
#include "copy/chunk.h"
#include "kvbm/result.h"
#include "kvbm/storage/pinned.h"
#include "kvbm/storage/system.h"

namespace kvbm::detail {

// Host memory a copy is staged in, a fixed buffer of `ring` while it lives (its file I/O
// then skips pinning its pages per request). The ring must outlive it. Move-only; used by
// one thread at a time.
class StagingBuffer {
 public:
  // `bytes` of pinned memory (for the GPU's copies) or of page-aligned system memory.
  // AllocationFailed/DeviceUnavailable from the allocation.
  static Result<StagingBuffer> allocate(UringBatch& ring, size_t bytes, bool pinned);
  StagingBuffer(StagingBuffer&& other) noexcept;
  StagingBuffer& operator=(StagingBuffer&&) = delete;
  ~StagingBuffer();  // removes the fixed buffer, then frees

  char* data() const { return data_; }
  size_t size() const { return size_; }
  bool pinned() const { return pinned_.has_value(); }

 private:
  StagingBuffer(UringBatch* ring, std::optional<PinnedStorage> pinned,
                std::optional<SystemStorage> plain, size_t bytes);
  UringBatch* ring_;
  std::optional<PinnedStorage> pinned_;
  std::optional<SystemStorage> plain_;
  char* data_;
  size_t size_;
};

// A chunk, or a piece of one, with its place in a batch.
struct StagedPiece {
  uint64_t src;
  uint64_t dst;
  uint64_t len;
  uint64_t stage;  // offset in the batch's buffer
  uint32_t src_region;
  uint32_t dst_region;
};

struct StagingPolicy {
  // Where a piece starts in the buffer: on a page where its file side can do direct I/O
  // (offset and length page-aligned), else on 16 bytes; or on a page always.
  bool always_page = false;
  // A piece that does not fit the rest of a batch: split to fill it; or (false) left for
  // the next batch, only a piece larger than a whole batch being split (into pieces of a
  // batch's size, which keeps aligned offsets aligned).
  bool fill = false;
};

// Cuts a chunk list into batches of at most `capacity` staged bytes.
class StagingBatcher {
 public:
  // src_file/dst_file: which side's addresses are file offsets (their alignment decides
  // the pieces' places, unless policy.always_page).
  StagingBatcher(std::span<const Chunk> chunks, uint64_t capacity, bool src_file, bool dst_file,
                 StagingPolicy policy = {});

  // The next batch into `out` (cleared first); false when every chunk has been handed out.
  bool next(std::vector<StagedPiece>& out);

 private:
  std::span<const Chunk> chunks_;
  uint64_t capacity_;
  bool src_file_;
  bool dst_file_;
  StagingPolicy policy_;
  size_t i_ = 0;       // the chunk being placed
  uint64_t done_ = 0;  // its bytes already placed
};

}  // namespace kvbm::detail
