// NullStorage: a storage with no bytes behind it, for tests and placeholders.
#pragma once

#include <cstddef>

#include "kvbm/storage/registration.h"

namespace kvbm {

class NullStorage final : public RegisterableStorage {
 public:
  explicit NullStorage(size_t size = 0) : size_(size) {}
  NullStorage(NullStorage&&) noexcept = default;
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
