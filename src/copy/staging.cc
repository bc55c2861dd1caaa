#include "copy/staging.h"

#include <algorithm>

namespace kvbm::detail {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace

Result<StagingBuffer> StagingBuffer::allocate(UringBatch& ring, size_t bytes, bool pinned) {
  if (pinned) {
    auto p = PinnedStorage::allocate(bytes);
    if (!p) return p.error();
    return StagingBuffer(&ring, std::move(*p), std::nullopt, bytes);
  }
  auto p = SystemStorage::allocate(bytes);
  if (!p) return p.error();
  return StagingBuffer(&ring, std::nullopt, std::move(*p), bytes);
}

StagingBuffer::StagingBuffer(UringBatch* ring, std::optional<PinnedStorage> pinned,
                             std::optional<SystemStorage> plain, size_t bytes)
    : ring_(ring),
      pinned_(std::move(pinned)),
      plain_(std::move(plain)),
      data_(static_cast<char*>(pinned_ ? pinned_->data() : plain_->data())),
      size_(bytes) {
  ring_->add_fixed(data_, size_);
}

StagingBuffer::StagingBuffer(StagingBuffer&& other) noexcept
    : ring_(other.ring_),
      pinned_(std::move(other.pinned_)),
      plain_(std::move(other.plain_)),
      data_(other.data_),
      size_(other.size_) {
  other.ring_ = nullptr;  // the moved-from buffer owns nothing
  other.data_ = nullptr;
}

StagingBuffer::~StagingBuffer() {
  if (ring_ != nullptr) ring_->remove_fixed(data_);
}

StagingBatcher::StagingBatcher(std::span<const Chunk> chunks, uint64_t capacity, bool src_file,
                               bool dst_file, StagingPolicy policy)
    : chunks_(chunks),
      capacity_(capacity),
      src_file_(src_file),
      dst_file_(dst_file),
      policy_(policy) {}

bool StagingBatcher::next(std::vector<StagedPiece>& out) {
  out.clear();
  uint64_t used = 0;
  while (i_ < chunks_.size()) {
    const Chunk& c = chunks_[i_];
    const uint64_t src = c.src + done_, dst = c.dst + done_, rest = c.len - done_;
    // Direct I/O needs buffer, offset and length page-aligned: give such pieces a page.
    const uint64_t file_bits = (src_file_ ? src : 0) | (dst_file_ ? dst : 0) | rest;
    const bool page = policy_.always_page || file_bits % kPage == 0;
    const uint64_t at = align_up(used, page ? kPage : 16);
    if (at >= capacity_ || (!policy_.fill && !out.empty() && rest > capacity_ - at)) break;
    const uint64_t len = std::min(rest, capacity_ - at);
    out.push_back({src, dst, len, at, c.src_region, c.dst_region});
    used = at + len;
    done_ += len;
    if (done_ == c.len) {
      ++i_;
      done_ = 0;
    }
  }
  return !out.empty();
}

}  // namespace kvbm::detail
