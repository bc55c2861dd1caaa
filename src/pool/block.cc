#include "kvbm/pool/block.h"

#include <utility>

#include "pool/pool_state.h"

namespace kvbm {

const char* to_string(BlockState state) {
  switch (state) {
    case BlockState::Reset:
      return "Reset";
    case BlockState::Partial:
      return "Partial";
    case BlockState::Complete:
      return "Complete";
    case BlockState::Registered:
      return "Registered";
  }
  return "unknown state";
}

MutableBlock::MutableBlock(MutableBlock&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      id_(other.id_),
      state_(other.state_),
      key_(other.key_) {}

MutableBlock& MutableBlock::operator=(MutableBlock&& other) noexcept {
  if (this != &other) {
    release();
    pool_ = std::exchange(other.pool_, nullptr);
    id_ = other.id_;
    state_ = other.state_;
    key_ = other.key_;
  }
  return *this;
}

MutableBlock::~MutableBlock() {
  release();
}

Tier MutableBlock::tier() const {
  return pool_->tier;
}

void MutableBlock::release() {
  if (!pool_) return;
  detail::PoolState::release_handle(std::exchange(pool_, nullptr), id_, true);
  state_ = BlockState::Reset;
}

Status MutableBlock::check_not_empty(const char* what) const {
  if (pool_) return {};
  return err(ErrorCode::InvalidArgument, "cannot ", what,
             ": the handle is empty (its block was registered, released or moved)");
}

Status MutableBlock::begin_fill() {
  KVBM_TRY(check_not_empty("begin filling"));
  if (state_ != BlockState::Reset) {
    return err(ErrorCode::InvalidArgument, "cannot begin filling ", to_string(pool_->tier),
               " block ", id_, ": it is ", to_string(state_), ", not Reset");
  }
  state_ = BlockState::Partial;
  return {};
}

Status MutableBlock::check_writable() const {
  KVBM_TRY(check_not_empty("write"));
  if (state_ != BlockState::Partial) {
    return err(ErrorCode::InvalidArgument, "cannot write ", to_string(pool_->tier), " block ", id_,
               ": it is ", to_string(state_), ", not Partial");
  }
  return {};
}

Status MutableBlock::complete(const SequenceBlock& key) {
  KVBM_TRY(check_not_empty("complete"));
  if (state_ != BlockState::Partial) {
    return err(ErrorCode::InvalidArgument, "cannot complete ", to_string(pool_->tier), " block ",
               id_, ": it is ", to_string(state_), ", not Partial");
  }
  key_ = key;
  state_ = BlockState::Complete;
  return {};
}

Status MutableBlock::reset() {
  KVBM_TRY(check_not_empty("reset"));
  state_ = BlockState::Reset;
  key_ = {};
  return {};
}

ImmutableBlock::ImmutableBlock(const ImmutableBlock& other)
    : pool_(other.pool_),
      id_(other.id_),
      hash_(other.hash_),
      parent_(other.parent_),
      has_parent_(other.has_parent_) {
  if (!pool_) return;
  std::lock_guard lock(pool_->mu);
  pool_->acquire_locked(id_);
  ++pool_->handles;
}

ImmutableBlock& ImmutableBlock::operator=(const ImmutableBlock& other) {
  if (this != &other) *this = ImmutableBlock(other);
  return *this;
}

ImmutableBlock& ImmutableBlock::operator=(ImmutableBlock&& other) noexcept {
  if (this != &other) {
    release();
    pool_ = std::exchange(other.pool_, nullptr);
    id_ = other.id_;
    hash_ = other.hash_;
    parent_ = other.parent_;
    has_parent_ = other.has_parent_;
  }
  return *this;
}

Tier ImmutableBlock::tier() const {
  return pool_->tier;
}

std::optional<SequenceHash> ImmutableBlock::parent_hash() const {
  if (!has_parent_) return std::nullopt;
  return parent_;
}

void ImmutableBlock::release() {
  if (!pool_) return;
  detail::PoolState::release_handle(std::exchange(pool_, nullptr), id_, false);
}

}  // namespace kvbm
