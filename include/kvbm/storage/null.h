// NullStorage: a storage with no bytes behind it, for tests and placeholders.
#pragma once

#include "kvbm/export.h"

#include <cstddef>

#include "kvbm/storage/registration.h"

namespace kvbm {

/// A size and no bytes (nothing to free).
class KVBM_API NullStorage final : public RegisterableStorage {
 public:
  /// A storage of `size` bytes that has none.
  explicit NullStorage(size_t size = 0) : size_(size) {}
  /// Moves the registrations.
  NullStorage(NullStorage&&) noexcept = default;
  /// Releases this storage's registrations, then takes `other`'s.
  NullStorage& operator=(NullStorage&& other) noexcept {
    release_registrations();
    RegisterableStorage::operator=(std::move(other));
    size_ = other.size_;
    return *this;
  }
  ~NullStorage() override { release_registrations(); }

  StorageType type() const override { return StorageType::null(); }
  uint64_t addr() const override { return 0; }
  size_t size() const override { return size_; }

 private:
  size_t size_;
};

}  // namespace kvbm
