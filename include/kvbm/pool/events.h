// Tiers of the block manager, and the events its pools publish.
//
// A pool emits exactly one Stored event when a sequence hash becomes registered on its
// tier and exactly one Removed event when it stops being matchable there (evicted for
// reuse, dropped after a failed copy, or cleared). Registering a hash already present
// (dedup) emits nothing.
//
// Thread safety: an EventCallback is called with the emitting pool's lock held, in the
// order of the transitions: it must be quick and must not call into any pool or block
// manager (push into a queue, e.g. EventQueue, and act on it elsewhere). EventQueue may be
// shared by any number of threads.
#pragma once

#include "kvbm/export.h"

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "kvbm/pool/hash.h"

namespace kvbm {

/// G1: GPU memory (Device; host memory where there is no GPU). G2: host memory (Pinned;
/// System without a GPU). G3: disk (Disk).
enum class Tier : uint8_t { G1 = 0, G2 = 1, G3 = 2 };
inline constexpr size_t kNumTiers = 3;
KVBM_API const char* to_string(Tier tier);

enum class EventKind : uint8_t { Stored, Removed };
KVBM_API const char* to_string(EventKind kind);

/// A block stored in, or removed from, a tier's pool (for a KV-aware router).
struct KVBM_API Event {
  EventKind kind = EventKind::Stored;       ///< stored or removed
  Tier tier = Tier::G1;                     ///< whose pool
  SequenceHash sequence_hash = 0;           ///< the block
  std::optional<SequenceHash> parent_hash;  ///< none for the first block of a sequence
  /// Every field equal.
  bool operator==(const Event&) const = default;
};

using EventCallback = std::function<void(const Event&)>;

/// A subscriber's queue: callback() pushes, drain() takes everything pushed so far.
class KVBM_API EventQueue {
 public:
  /// A callback pushing into this queue; the queue must outlive every pool given it.
  EventCallback callback();
  /// The events pushed since the last drain, oldest first.
  std::vector<Event> drain();

 private:
  std::mutex mu_;
  std::vector<Event> events_;
};

}  // namespace kvbm
