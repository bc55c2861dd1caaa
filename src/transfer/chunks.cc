#include <vector>

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

uint64_t build_chunks(const Layout& src, std::span<const size_t> src_ids, const Layout& dst,
                      std::span<const size_t> dst_ids, std::vector<Chunk>& out) {
  out.clear();
  const LayoutConfig& c = src.config();
  const uint64_t chunk = c.chunk_bytes();
  // Each chunk's address by the strides, from region bases read once: the block copy
  // kernel's formula. Through memory_region_unchecked() (two calls to a region's addr()
  // per chunk) this loop took about 3 ms for 1 GiB of 16 KiB chunks, before any thread
  // copied a byte (a sixth of that copy's time on 16 cores).
  const Layout::Strides ss = src.strides();
  const Layout::Strides ds = dst.strides();
  std::vector<uint64_t> src_base(ss.per_layer_regions ? c.num_layers : 1);
  std::vector<uint64_t> dst_base(ds.per_layer_regions ? c.num_layers : 1);
  for (size_t r = 0; r < src_base.size(); ++r) src_base[r] = src.region(r).addr();
  for (size_t r = 0; r < dst_base.size(); ++r) dst_base[r] = dst.region(r).addr();
  uint64_t total = 0;
  auto emit = [&](size_t i, size_t l, size_t o) {
    const auto sr = static_cast<uint32_t>(ss.per_layer_regions ? l : 0);
    const auto dr = static_cast<uint32_t>(ds.per_layer_regions ? l : 0);
    const uint64_t s = src_base[sr] + src_ids[i] * ss.block + l * ss.layer + o * ss.outer;
    const uint64_t d = dst_base[dr] + dst_ids[i] * ds.block + l * ds.layer + o * ds.outer;
    total += chunk;
    if (!out.empty()) {
      Chunk& last = out.back();
      if (last.src_region == sr && last.dst_region == dr && last.src + last.len == s &&
          last.dst + last.len == d) {
        last.len += chunk;
        return;
      }
    }
    out.push_back(Chunk{s, d, chunk, sr, dr});
  };
  // Visit chunks in the order both sides store them, so runs of blocks coalesce.
  const size_t n = src_ids.size();
  const bool per_layer =
      src.kind() == LayoutKind::LayerSeparate && dst.kind() == LayoutKind::LayerSeparate;
  const bool outer_major =
      per_layer && src.order() == LayerOrder::OuterMajor && dst.order() == LayerOrder::OuterMajor;
  if (outer_major) {
    for (size_t l = 0; l < c.num_layers; ++l)
      for (size_t o = 0; o < c.outer_dim; ++o)
        for (size_t i = 0; i < n; ++i) emit(i, l, o);
  } else if (per_layer) {
    for (size_t l = 0; l < c.num_layers; ++l)
      for (size_t i = 0; i < n; ++i)
        for (size_t o = 0; o < c.outer_dim; ++o) emit(i, l, o);
  } else {
    for (size_t i = 0; i < n; ++i)
      for (size_t l = 0; l < c.num_layers; ++l)
        for (size_t o = 0; o < c.outer_dim; ++o) emit(i, l, o);
  }
  return total;
}

}  // namespace kvbm::detail
