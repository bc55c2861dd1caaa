// ExternalG1: a block manager whose G1 is an inference engine's paged KV cache (vLLM's).
// The engine's scheduler picks the G1 block ids; kvbm never allocates them. The manager is
// made with the engine's layout as G1 (TierLayouts::g1, e.g. an alias_layout() of it,
// kvbm/pool/layout_alias.h) and its G1 pool stays unused; G2 (and G3) are kvbm's. Every
// tier must be LayerSeparate (config.kind for the tiers kvbm allocates), so that loads can
// go layer by layer.
//
//   peek   how many leading hashes a load would find (G2, then G3 for the rest, as match()
//          walks them). Side-effect free: no handle taken, no counter, no event, no I/O.
//   save   copies engine blocks into new G2 blocks (one engine request, all layers) and,
//          once finished, registers them under their keys and hands them to the offload
//          manager (on to G3 through its frequency filter). Hashes already on G2 are
//          skipped; when G2 has no room for all, the rest are dropped and counted.
//   load   match() (counted as a lookup), then copies the matched G2/G3 blocks into the
//          engine block ids the scheduler allocated: one engine request per layer and
//          source tier, issued in layer order, so layer 0 is usable before the load ends.
//
// Fail closed: engine ids whose bytes did not arrive (a failed copy, or a block evicted
// between peek and load) are named in LoadResult::failed_ids; G3 blocks whose copy failed
// are removed from G3 (a Removed event each). Counters (BlockManager::counters()): save
// moves count as g1_to_g2, load moves as g2_to_g1 / g3_to_g1, loaded blocks as hits of
// their tier.
//
// Ownership: the manager outlives its ExternalG1, which outlives its ExternalSave and
// ExternalLoad operations; the engine's memory outlives all of them. An operation holds
// its source blocks (not evictable) until finished or destroyed; destroying an unfinished
// one waits for its copies. Thread safety: ExternalG1's calls from many threads at once;
// one operation from one thread at a time.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kvbm/export.h"
#include "kvbm/pool/block_manager.h"
#include "kvbm/result.h"

namespace kvbm {

/// What a load would find (ExternalG1::peek).
struct KVBM_API ExternalPeek {
  size_t g2 = 0;  ///< the first g2 hashes are on G2
  size_t g3 = 0;  ///< the next g3 on G3
  /// Blocks a load would bring.
  size_t blocks() const { return g2 + g3; }
};

/// What a save did (ExternalSave::finish).
struct KVBM_API SaveResult {
  size_t saved = 0;            ///< registered on G2 by this save
  size_t present = 0;          ///< skipped: on G2 already
  size_t dropped = 0;          ///< no room on G2, or the copy failed
  std::optional<Error> error;  ///< the copy's error, when it failed
};

/// What a load did (ExternalLoad::finish).
struct KVBM_API LoadResult {
  size_t loaded = 0;               ///< engine blocks whose bytes arrived
  std::vector<size_t> failed_ids;  ///< engine block ids whose bytes did not, ascending
  std::optional<Error> error;      ///< the first copy error
};

class ExternalG1;

/// A save in flight (ExternalG1::save).
class KVBM_API ExternalSave {
 public:
  /// Takes `other`'s save.
  ExternalSave(ExternalSave&&) noexcept;
  /// Waits for this save's copy, then takes `other`'s.
  ExternalSave& operator=(ExternalSave&&) noexcept;
  ~ExternalSave();
  /// True once the copy finished (or there was nothing to copy). Never blocks.
  bool ready();
  /// Waits, then registers the copies (see above). A second call returns the first result.
  SaveResult finish();

  struct State;

 private:
  friend class ExternalG1;
  explicit ExternalSave(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

/// A layer-by-layer load in flight (ExternalG1::load).
class KVBM_API ExternalLoad {
 public:
  /// Takes `other`'s load.
  ExternalLoad(ExternalLoad&&) noexcept;
  /// Waits for this load's copies, then takes `other`'s.
  ExternalLoad& operator=(ExternalLoad&&) noexcept;
  ~ExternalLoad();
  /// Layers of the engine's KV cache.
  size_t num_layers() const;
  /// Blocks being copied (the match, at most the ids given).
  size_t blocks() const;
  /// Waits for layer `layer` of every block; its first copy error. OutOfBounds naming the
  /// layer past num_layers().
  Status wait_layer(size_t layer);
  /// True once every copy finished. Never blocks.
  bool ready();
  /// Waits for every layer; counts, fails closed (see above). A second call returns the
  /// first result.
  LoadResult finish();

  struct State;

 private:
  friend class ExternalG1;
  explicit ExternalLoad(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

/// A block manager's view of an engine-owned G1 (see above).
class KVBM_API ExternalG1 {
 public:
  /// InvalidArgument when the manager has no G2 tier or a tier is not LayerSeparate
  /// (naming it); layer_aliases()'s errors.
  static Result<std::unique_ptr<ExternalG1>> create(BlockManager& manager);
  ~ExternalG1();

  /// Layers of the engine's KV cache.
  size_t num_layers() const;
  /// G1's num_blocks.
  size_t engine_blocks() const;

  /// Over `hashes` (pass a subspan to bound it); side-effect free (see above).
  ExternalPeek peek(std::span<const SequenceHash> hashes) const;

  /// Copies engine block engine_ids[i] into G2 under keys[i]. InvalidArgument for lists of
  /// different lengths; OutOfBounds naming an engine id past engine_blocks(); the engine's
  /// errors.
  Result<ExternalSave> save(std::span<const size_t> engine_ids,
                            std::span<const SequenceBlock> keys);

  /// Loads the blocks of `hashes` into engine_ids[i] (as far as they match). The same
  /// argument errors as save(); copy errors, at the start or while copying, come back in
  /// LoadResult (fail closed), never from here.
  Result<ExternalLoad> load(std::span<const SequenceHash> hashes,
                            std::span<const size_t> engine_ids);

  struct State;

 private:
  explicit ExternalG1(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace kvbm
