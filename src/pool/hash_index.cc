#include "pool/hash_index.h"

#include <bit>

namespace kvbm::detail {

HashIndex::HashIndex(size_t capacity) {
  const size_t n = std::bit_ceil(std::max<size_t>(capacity * 2, 8));
  slots_.resize(n);
  mask_ = n - 1;
  shift_ = 64 - static_cast<unsigned>(std::countr_zero(n));
}

size_t HashIndex::slot_of(uint64_t key) const {
  size_t i = home(key);
  while (slots_[i].value != kNone && slots_[i].key != key) i = (i + 1) & mask_;
  return i;
}

uint32_t HashIndex::find(uint64_t key) const {
  return slots_[slot_of(key)].value;
}

void HashIndex::insert(uint64_t key, uint32_t value) {
  Slot& s = slots_[slot_of(key)];
  s.key = key;
  s.value = value;
  ++size_;
}

void HashIndex::erase(uint64_t key) {
  size_t hole = slot_of(key);
  if (slots_[hole].value == kNone) return;
  // Backward shift: move later members of the probe run into the hole when their home
  // position does not lie cyclically in (hole, j].
  for (size_t j = (hole + 1) & mask_; slots_[j].value != kNone; j = (j + 1) & mask_) {
    const size_t h = home(slots_[j].key);
    const bool stays = hole < j ? (h > hole && h <= j) : (h > hole || h <= j);
    if (!stays) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = Slot{};
  --size_;
}

}  // namespace kvbm::detail
