// How the chunks of a block copy are addressed: each (block, layer, outer) chunk's address
// on both sides by the layouts' strides from region bases read once (the block copy
// kernel's formula), visited in the order both sides store them, with neighbours that are
// adjacent on both sides coalesced. build_chunks() lists a whole request's chunks this way;
// the host path's parts of a large request each walk their own range of blocks
// (copy_paths.cc: submit_blocks), so no thread waits for one list of them all.
// A plan copies what it needs from the layouts (not their memory, which must outlive the
// copy); it is immutable, and may be used from several threads at once.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "transfer/transfer_impl.h"

namespace kvbm::detail {

class ChunkPlan {
 public:
  // Layouts of the same block shape (validate_copy passed).
  ChunkPlan(const Layout& src, const Layout& dst);

  uint64_t chunk_bytes() const { return chunk_; }
  size_t chunks_per_block() const { return layers_ * outer_; }

  // Calls emit(const Chunk&) for the chunks of entries [from, to) of the id lists,
  // neighbours adjacent on both sides as one.
  template <typename Emit>
  void for_each(std::span<const size_t> src_ids, std::span<const size_t> dst_ids, size_t from,
                size_t to, Emit&& emit) const {
    Chunk run{};
    bool open = false;
    auto add = [&](size_t i, size_t l, size_t o) {
      const auto sr = static_cast<uint32_t>(ss_.per_layer_regions ? l : 0);
      const auto dr = static_cast<uint32_t>(ds_.per_layer_regions ? l : 0);
      const uint64_t s = src_base_[sr] + src_ids[i] * ss_.block + l * ss_.layer + o * ss_.outer;
      const uint64_t d = dst_base_[dr] + dst_ids[i] * ds_.block + l * ds_.layer + o * ds_.outer;
      if (open && run.src_region == sr && run.dst_region == dr && run.src + run.len == s &&
          run.dst + run.len == d) {
        run.len += chunk_;
        return;
      }
      if (open) emit(run);
      run = Chunk{s, d, chunk_, sr, dr};
      open = true;
    };
    switch (order_) {
      case Order::LayerOuterBlock:
        for (size_t l = 0; l < layers_; ++l)
          for (size_t o = 0; o < outer_; ++o)
            for (size_t i = from; i < to; ++i) add(i, l, o);
        break;
      case Order::LayerBlockOuter:
        for (size_t l = 0; l < layers_; ++l)
          for (size_t i = from; i < to; ++i)
            for (size_t o = 0; o < outer_; ++o) add(i, l, o);
        break;
      case Order::BlockLayerOuter:
        for (size_t i = from; i < to; ++i)
          for (size_t l = 0; l < layers_; ++l)
            for (size_t o = 0; o < outer_; ++o) add(i, l, o);
        break;
    }
    if (open) emit(run);
  }

 private:
  // The loop order, outermost first: the order in which both sides store their chunks.
  enum class Order { LayerOuterBlock, LayerBlockOuter, BlockLayerOuter };

  Layout::Strides ss_, ds_;
  std::vector<uint64_t> src_base_, dst_base_;
  size_t layers_, outer_;
  uint64_t chunk_;
  Order order_;
};

}  // namespace kvbm::detail
