#include "xfer/ucx_common/staging_pool.h"

#include <cstdlib>

namespace kvbm::xfer::detail::staging {

void Return::operator()(char* p) const {
  pool->recycle(p);
}

Allocator host_allocator() {
  return {[](size_t bytes) -> Result<char*> {
            auto* p = static_cast<char*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
            if (p == nullptr)
              return err(ErrorCode::AllocationFailed, "a ", bytes, "-byte staging buffer");
            return p;
          },
          [](char* p) { std::free(p); }};
}

Pool::~Pool() {
  for (char* p : free_) allocator_.free(p);
}

Status Pool::reserve() {
  std::lock_guard<std::mutex> lock(mu_);
  while (free_.size() < keep_free_ && free_.size() + in_use_ < max_) {
    auto p = allocator_.alloc(bytes_);
    if (!p) return p.error();
    free_.push_back(*p);
  }
  return {};
}

void Pool::recycle(char* p) {
  std::lock_guard<std::mutex> lock(mu_);
  --in_use_;
  if (free_.size() < keep_free_) {
    free_.push_back(p);
  } else {
    allocator_.free(p);
  }
}

Buffer Pool::acquire(bool* at_cap) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (at_cap != nullptr) *at_cap = in_use_ >= max_;
    if (in_use_ >= max_) return Buffer(nullptr, {this});
    ++in_use_;  // counted before any allocation, so the cap holds across threads
    if (!free_.empty()) {
      char* p = free_.back();
      free_.pop_back();
      return Buffer(p, {this});
    }
  }
  auto p = allocator_.alloc(bytes_);
  if (!p) {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
    return Buffer(nullptr, {this});
  }
  return Buffer(*p, {this});
}

size_t Pool::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

}  // namespace kvbm::xfer::detail::staging
