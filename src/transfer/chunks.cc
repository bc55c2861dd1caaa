#include <vector>

#include "transfer/chunk_plan.h"
#include "transfer/transfer_impl.h"

namespace kvbm::detail {

Status validate_copy(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                     std::span<const size_t> dst_ids) {
  if (src_ids.size() != dst_ids.size()) {
    return err(ErrorCode::InvalidArgument, "block lists differ in length: ", src_ids.size(),
               " source ids, ", dst_ids.size(), " destination ids");
  }
  if (src_ids.empty()) return err(ErrorCode::InvalidArgument, "no blocks to copy");
  // Blocks map chunk for chunk: kinds, orders, alignments and block counts may differ.
  const LayoutConfig& a = src.config();
  const LayoutConfig& b = dst.config();
  if (a.num_layers != b.num_layers || a.outer_dim != b.outer_dim || a.page_size != b.page_size ||
      a.inner_dim != b.inner_dim || a.dtype_bytes != b.dtype_bytes) {
    return err(ErrorCode::InvalidArgument, "layouts have incompatible blocks: source layers ",
               a.num_layers, " outer ", a.outer_dim, " page ", a.page_size, " inner ", a.inner_dim,
               " dtype ", a.dtype_bytes, ", destination layers ", b.num_layers, " outer ",
               b.outer_dim, " page ", b.page_size, " inner ", b.inner_dim, " dtype ",
               b.dtype_bytes);
  }
  const size_t ns = a.num_blocks;
  const size_t n = b.num_blocks;
  // One bitmap per request (not per block): destinations seen, then sources for overlap.
  std::vector<uint8_t> seen(n, 0);
  for (size_t i = 0; i < dst_ids.size(); ++i) {
    if (src_ids[i] >= ns) {
      return err(ErrorCode::OutOfBounds, "source block id ", src_ids[i], " (entry ", i,
                 ") out of range (num_blocks ", ns, ")");
    }
    if (dst_ids[i] >= n) {
      return err(ErrorCode::OutOfBounds, "destination block id ", dst_ids[i], " (entry ", i,
                 ") out of range (num_blocks ", n, ")");
    }
    if (seen[dst_ids[i]]) {
      return err(ErrorCode::InvalidArgument, "destination block id ", dst_ids[i],
                 " appears more than once (again at entry ", i, ")");
    }
    seen[dst_ids[i]] = 1;
  }
  if (&src == &dst) {
    for (size_t i = 0; i < src_ids.size(); ++i) {
      if (seen[src_ids[i]]) {
        return err(ErrorCode::InvalidArgument, "block ", src_ids[i],
                   " is both a source and a destination within one layout");
      }
    }
  }
  return {};
}

ChunkPlan::ChunkPlan(const Layout& src, const Layout& dst)
    : ss_(src.strides()),
      ds_(dst.strides()),
      layers_(src.config().num_layers),
      outer_(src.config().outer_dim),
      chunk_(src.config().chunk_bytes()) {
  src_base_.resize(ss_.per_layer_regions ? layers_ : 1);
  dst_base_.resize(ds_.per_layer_regions ? layers_ : 1);
  for (size_t r = 0; r < src_base_.size(); ++r) src_base_[r] = src.region(r).addr();
  for (size_t r = 0; r < dst_base_.size(); ++r) dst_base_[r] = dst.region(r).addr();
  // Visit chunks in the order both sides store them, so runs of blocks coalesce.
  const bool per_layer =
      src.kind() == LayoutKind::LayerSeparate && dst.kind() == LayoutKind::LayerSeparate;
  const bool outer_major =
      per_layer && src.order() == LayerOrder::OuterMajor && dst.order() == LayerOrder::OuterMajor;
  order_ = outer_major ? Order::LayerOuterBlock
           : per_layer ? Order::LayerBlockOuter
                       : Order::BlockLayerOuter;
}

// Through the plan rather than memory_region_unchecked() (two calls to a region's addr()
// per chunk), which made listing a large request a visible share of its copy's time
// (figures: BENCHMARKS.md, "Figures behind the code").
uint64_t build_chunks(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                      std::span<const size_t> dst_ids, std::vector<Chunk>& out) {
  out.clear();
  const ChunkPlan plan(src, dst);
  plan.for_each(src_ids, dst_ids, 0, src_ids.size(), [&](const Chunk& c) { out.push_back(c); });
  return src_ids.size() * plan.chunks_per_block() * plan.chunk_bytes();
}

}  // namespace kvbm::detail
