// Internals of the transfer layer: the chunk list every path starts from, and the base of
// the per-path Transfer implementations.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "copy/chunk.h"
#include "kvbm/layout.h"
#include "kvbm/transfer.h"

namespace kvbm {

class Transfer::Impl {
 public:
  Impl(TransferPath path, uint64_t bytes, size_t chunks)
      : path_(path), bytes_(bytes), chunks_(chunks) {}
  virtual ~Impl() = default;
  virtual bool ready() = 0;
  virtual Status wait(std::chrono::milliseconds timeout) = 0;

  TransferPath path() const { return path_; }
  uint64_t bytes() const { return bytes_; }
  virtual size_t chunks() const { return chunks_; }

 private:
  TransferPath path_;
  uint64_t bytes_;
  size_t chunks_;
};

namespace detail {

// Checks the id lists against the layouts (lengths, ranges, duplicate destinations,
// shapes, overlap when src and dst are one layout).
Status validate_copy(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                     std::span<const size_t> dst_ids);
// Appends the chunks of the copy to `out` (cleared first), coalescing neighbours that are
// adjacent on both sides. Precondition: validate_copy passed. Returns the payload bytes.
uint64_t build_chunks(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                      std::span<const size_t> dst_ids, std::vector<Chunk>& out);

}  // namespace detail
}  // namespace kvbm
