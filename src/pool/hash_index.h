// The pool's sequence hash -> block id map: open addressing with linear probing over a
// fixed power-of-two table at least twice the pool's size (a pool never holds more hashes
// than blocks, so it never grows), deletion by backward shift (no tombstones). Smaller and
// faster than a node-based map: 16 bytes a slot, no allocation after construction.
// Not thread-safe: its owner locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvbm::detail {

class HashIndex {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  // Room for `capacity` keys.
  explicit HashIndex(size_t capacity);

  uint32_t find(uint64_t key) const;
  // Precondition: `key` absent, fewer than capacity keys, value != kNone.
  void insert(uint64_t key, uint32_t value);
  // No-op when absent.
  void erase(uint64_t key);
  size_t size() const { return size_; }
  size_t bytes() const { return slots_.capacity() * sizeof(Slot); }

 private:
  struct Slot {
    uint64_t key = 0;
    uint32_t value = kNone;
  };
  size_t home(uint64_t key) const {
    // A full mix first: sequence hashes are random already, but keys in arithmetic
    // progression (tests, benches) put through one multiply alone form long probe runs.
    key ^= key >> 32;
    key *= 0xd6e8feb86659fd93ull;
    key ^= key >> 32;
    key *= 0xd6e8feb86659fd93ull;
    key ^= key >> 32;
    return static_cast<size_t>(key >> shift_);
  }
  size_t slot_of(uint64_t key) const;  // its slot, or the empty one where it would go

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  unsigned shift_ = 0;
  size_t size_ = 0;
};

}  // namespace kvbm::detail
