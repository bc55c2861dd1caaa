// KV block layouts: where each (block, layer, outer) chunk of a KV cache lives in storage.
//
// A chunk is page_size * inner_dim * dtype_bytes bytes: one block's keys (outer 0) or
// values (outer 1) of one layer. Two layouts:
//   FullyContiguous  one region, block-major: [block][layer][outer][chunk], each block's
//                    stride rounded up to `alignment`.
//   LayerSeparate    one region per layer; inside it either block-major [block][outer][chunk]
//                    (block stride aligned) or outer-major [outer][block][chunk] (chunk
//                    stride aligned).
// A layout is built over storages of one tier (System, Pinned, Device, Disk: for Disk an
// address is a file offset) or allocated through an allocator; it owns its storages.
// Registered with an agent, it serializes (config + the RemoteDescriptor of each region) so
// a peer can rebuild it with from_bytes() as a layout over RemoteStorage regions and
// address its blocks.
//
// Thread safety: const calls may be made from many threads at once; register_with_agent
// needs external synchronization.
#pragma once

#include "kvbm/export.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/remote/remote_descriptor.h"
#include "kvbm/result.h"
#include "kvbm/storage/storage.h"
#include "kvbm/xfer/agent.h"

namespace kvbm {

/// The shape of a KV cache: blocks of layers of K/V chunks.
struct KVBM_API LayoutConfig {
  size_t num_blocks = 0;   ///< blocks in the layout
  size_t num_layers = 0;   ///< layers per block
  size_t outer_dim = 1;    ///< 1, or 2 for separate K and V
  size_t page_size = 0;    ///< tokens per block
  size_t inner_dim = 0;    ///< heads * head size
  size_t dtype_bytes = 2;  ///< bytes per element
  size_t alignment = 1;    ///< power of two; strides are rounded up to it

  /// InvalidArgument naming the field: a zero dimension, outer_dim other than 1 or 2, an
  /// alignment that is not a power of two, or sizes whose products overflow 64 bits.
  Status validate() const;
  /// page_size * inner_dim * dtype_bytes. Precondition: validate() passed.
  size_t chunk_bytes() const { return page_size * inner_dim * dtype_bytes; }
  /// Every field equal.
  bool operator==(const LayoutConfig&) const = default;
};

/// How blocks map to regions: one region, or one per layer (see the top of this file).
enum class LayoutKind : uint8_t { FullyContiguous, LayerSeparate };
/// Order inside each region of a LayerSeparate layout (ignored for FullyContiguous).
enum class LayerOrder : uint8_t { BlockMajor, OuterMajor };
KVBM_API const char* to_string(LayoutKind kind);
KVBM_API const char* to_string(LayerOrder order);

/// A chunk's place: `region` indexes regions(), `offset` is from the region's start, and
/// `addr` = region address + offset (a virtual address, or a file offset for Disk).
struct KVBM_API MemoryRegion {
  uint64_t addr = 0;    ///< where the chunk starts
  size_t size = 0;      ///< the chunk's bytes
  size_t region = 0;    ///< index into the layout's regions
  uint64_t offset = 0;  ///< from the region's start
  /// Every field equal.
  bool operator==(const MemoryRegion&) const = default;
};

/// Where each (block, layer, outer) chunk of a KV cache lives in its storages, which it
/// owns. Move-only; const calls may be made from many threads at once.
class KVBM_API Layout {
 public:
  /// The version of to_bytes()/to_json()'s form; from_bytes() rejects others.
  static constexpr uint32_t kVersion = 1;

  /// Bytes each region needs (one entry for FullyContiguous, num_layers for LayerSeparate).
  /// validate()'s errors, or InvalidArgument when a total overflows.
  static Result<std::vector<size_t>> required_sizes(const LayoutConfig& config, LayoutKind kind,
                                                    LayerOrder order = LayerOrder::BlockMajor);

  /// A layout over storages the layout then owns. InvalidArgument for a wrong number of
  /// regions, storages of different tiers or devices, Null storage, a region whose
  /// address is not a multiple of the alignment; OutOfBounds naming the region, its size
  /// and the size needed when one is too small.
  static Result<Layout> create(const LayoutConfig& config, LayoutKind kind,
                               std::vector<std::unique_ptr<Storage>> regions,
                               LayerOrder order = LayerOrder::BlockMajor);

  /// Allocates the regions with `allocator` (SystemAllocator, PinnedAllocator,
  /// DeviceAllocator, DiskAllocator: anything with `Result<S> allocate(size_t) const`).
  template <typename Allocator>
  static Result<Layout> allocate(const LayoutConfig& config, LayoutKind kind,
                                 const Allocator& allocator,
                                 LayerOrder order = LayerOrder::BlockMajor) {
    auto sizes = required_sizes(config, kind, order);
    if (!sizes) return sizes.error();
    std::vector<std::unique_ptr<Storage>> regions;
    regions.reserve(sizes->size());
    for (size_t s : *sizes) {
      auto storage = allocator.allocate(s);
      if (!storage) return storage.error();
      using S = std::decay_t<decltype(*storage)>;
      regions.push_back(std::make_unique<S>(std::move(*storage)));
    }
    return create(config, kind, std::move(regions), order);
  }

  /// Layouts are move-only (they own their storages).
  Layout(Layout&&) noexcept = default;
  /// Frees this layout's storages, then takes `other`'s.
  Layout& operator=(Layout&&) noexcept = default;
  ~Layout();

  /// The shape.
  const LayoutConfig& config() const { return config_; }
  /// One region or one per layer.
  LayoutKind kind() const { return kind_; }
  /// The order inside a LayerSeparate layout's regions.
  LayerOrder order() const { return order_; }
  /// The tier of every region (StorageKind::Remote for a layout from from_bytes()).
  StorageType storage_type() const { return regions_.front()->type(); }
  /// 1 for FullyContiguous, num_layers for LayerSeparate.
  size_t num_regions() const { return regions_.size(); }
  ///@{
  /// Region `i` (std::out_of_range past num_regions()).
  const Storage& region(size_t i) const { return *regions_.at(i); }
  Storage& region(size_t i) { return *regions_.at(i); }
  ///@}
  /// For a layout from from_bytes(): the peer agent and each region's descriptor.
  const std::string& remote_agent() const { return remote_agent_; }
  /// For a layout from from_bytes(): each region's descriptor (empty otherwise).
  const std::vector<RemoteDescriptor>& remote_regions() const { return remote_; }
  /// Whether this is a peer's layout (from from_bytes() or from_remote()).
  bool is_remote() const { return !remote_.empty(); }

  /// The chunk of (block, layer, outer). OutOfBounds naming the index and its limit.
  Result<MemoryRegion> memory_region(size_t block, size_t layer, size_t outer) const;
  /// The same without bounds checks, for hot loops that validated their ids.
  MemoryRegion memory_region_unchecked(size_t block, size_t layer, size_t outer) const;
  /// The address formula in strides, for code that computes chunk addresses itself (the GPU
  /// copy kernel): chunk (b, l, o) starts at region(per_layer_regions ? l : 0).addr() +
  /// b * block + l * layer + o * outer, and is config().chunk_bytes() long.
  struct Strides {
    uint64_t block = 0;              ///< bytes from one block to the next
    uint64_t layer = 0;              ///< from one layer to the next (0 with per-layer regions)
    uint64_t outer = 0;              ///< from K to V
    bool per_layer_regions = false;  ///< LayerSeparate: a region per layer
  };
  /// This layout's strides.
  Strides strides() const;
  /// True when the layout has the same config, kind and order (so blocks map chunk for chunk).
  bool same_shape(const Layout& other) const {
    return config_ == other.config_ && kind_ == other.kind_ &&
           (kind_ == LayoutKind::FullyContiguous || order_ == other.order_);
  }

  /// Registers every region with `agent` (remote/agent_registration.h; Disk files are
  /// unlinked by it). InvalidArgument for a remote layout or a storage that cannot be
  /// registered; the agent's error otherwise (regions registered before it stay registered).
  Status register_with_agent(xfer::Agent& agent);

  /// CBOR / JSON carrying config, kind, order and each region's RemoteDescriptor.
  /// NotRegistered when a region is not registered with an agent.
  ///@{
  Result<std::string> to_bytes() const;
  Result<std::string> to_json() const;
  ///@}
  /// Rebuilds a peer's layout over RemoteStorage regions. The input is untrusted:
  /// InvalidArgument naming the problem (not CBOR/JSON, version, a missing or mistyped
  /// field, an invalid config, region count, regions of different agents or memory types,
  /// a region smaller than needed, input over 16 MiB or nesting deeper than 32 levels).
  ///@{
  static Result<Layout> from_bytes(std::string_view bytes);
  static Result<Layout> from_json(std::string_view json);
  ///@}
  /// A peer's layout from its regions' descriptors (what from_bytes does after decoding).
  /// InvalidArgument for no regions or regions of different agents; create()'s checks.
  static Result<Layout> from_remote(const LayoutConfig& config, LayoutKind kind,
                                    std::vector<RemoteDescriptor> regions,
                                    LayerOrder order = LayerOrder::BlockMajor);

 private:
  Layout() = default;
  static Result<Layout> build(const LayoutConfig& config, LayoutKind kind, LayerOrder order,
                              std::vector<std::unique_ptr<Storage>> regions);

  LayoutConfig config_;
  LayoutKind kind_ = LayoutKind::FullyContiguous;
  LayerOrder order_ = LayerOrder::BlockMajor;
  size_t chunk_ = 0;         ///< bytes of one chunk
  size_t block_stride_ = 0;  ///< FullyContiguous, LayerSeparate/BlockMajor
  size_t chunk_stride_ = 0;  ///< LayerSeparate/OuterMajor
  std::vector<std::unique_ptr<Storage>> regions_;
  std::string remote_agent_;
  std::vector<RemoteDescriptor> remote_;
};

}  // namespace kvbm
