#include "pool/tier_copy.h"

namespace kvbm::detail {

Result<TierCopy> TierCopy::start(TransferEngine& engine, const TierStore& src,
                                 std::vector<ImmutableBlock>& blocks, TierStore& dst,
                                 std::vector<MutableBlock> dst_blocks) {
  std::vector<size_t> src_ids, dst_ids;
  src_ids.reserve(blocks.size());
  dst_ids.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    src_ids.push_back(blocks[i].block_id());
    dst_ids.push_back(dst_blocks[i].block_id());
    KVBM_TRY(dst_blocks[i].begin_fill());
  }
  auto t = engine.copy(src.layout, src_ids, dst.layout, dst_ids);
  if (!t) return t.error();
  const uint64_t bytes = t->bytes();
  TierCopy copy(std::move(*t), src.tier, std::move(blocks), dst, std::move(dst_blocks));
  copy.bytes_ = bytes;
  return copy;
}

Result<std::vector<ImmutableBlock>> TierCopy::finish() {
  if (auto st = transfer_.wait(); !st) {
    dst_blocks_.clear();
    return st.error();
  }
  std::vector<ImmutableBlock> out;
  out.reserve(sources_.size());
  for (size_t i = 0; i < sources_.size(); ++i) {
    const SequenceBlock key{.block_hash = 0,
                            .sequence_hash = sources_[i].sequence_hash(),
                            .parent_hash = sources_[i].parent_hash()};
    KVBM_TRY(dst_blocks_[i].complete(key));
    auto r = dst_->pool->register_block(dst_blocks_[i]);
    if (!r) return r.error();
    out.push_back(std::move(*r));
  }
  dst_blocks_.clear();
  return out;
}

}  // namespace kvbm::detail
