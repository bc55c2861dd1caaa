// One engine request that copies registered blocks of one tier into newly allocated
// blocks of another, then registers the copies there under the same keys. The mover
// shared by the offload manager and onboard; policy stays with them.
#pragma once

#include <vector>

#include "kvbm/transfer.h"
#include "pool/tier.h"

namespace kvbm::detail {

class TierCopy {
 public:
  // Starts the copy (the destination blocks go Partial while their bytes land); `blocks`
  // is moved from only on success. Errors before anything moves are the engine's; the
  // destination blocks are freed then.
  static Result<TierCopy> start(TransferEngine& engine, const TierStore& src,
                                std::vector<ImmutableBlock>& blocks, TierStore& dst,
                                std::vector<MutableBlock> dst_blocks);

  // Waits; on success registers the copies on the destination (one handle per source
  // block, in order). On failure frees the destination blocks and returns the error.
  Result<std::vector<ImmutableBlock>> finish();

  const std::vector<ImmutableBlock>& sources() const { return sources_; }
  Tier source_tier() const { return src_; }
  Tier destination_tier() const { return dst_->tier; }
  uint64_t bytes() const { return bytes_; }

 private:
  TierCopy(Transfer t, Tier src, std::vector<ImmutableBlock> sources, TierStore& dst,
           std::vector<MutableBlock> dst_blocks)
      : transfer_(std::move(t)),
        src_(src),
        sources_(std::move(sources)),
        dst_(&dst),
        dst_blocks_(std::move(dst_blocks)) {}

  Transfer transfer_;
  Tier src_;
  std::vector<ImmutableBlock> sources_;
  TierStore* dst_;
  std::vector<MutableBlock> dst_blocks_;
  uint64_t bytes_ = 0;
};

}  // namespace kvbm::detail
