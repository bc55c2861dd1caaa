#include "xfer/backends/ucx/file_server.h"

#include <climits>
#include <cstdlib>

#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer::detail {

void StagingFree::operator()(char* p) const {
  std::free(p);
}

void FileServer::add(const Desc& region) {
  regions_.emplace(region.dev_id, region.addr, region.len);
}

void FileServer::remove(const Desc& region) {
  regions_.erase({region.dev_id, region.addr, region.len});
}

Status FileServer::check(uint64_t fd, uint64_t offset, uint64_t len) const {
  // The last region of fd starting at or before offset; regions of one agent never overlap.
  auto it = regions_.upper_bound({fd, offset, UINT64_MAX});
  if (it != regions_.begin()) {
    --it;
    const auto& [rfd, roff, rlen] = *it;
    if (rfd == fd && offset >= roff && len <= rlen && offset - roff <= rlen - len) return {};
  }
  return err(ErrorCode::OutOfBounds, "file fd ", fd, " offset ", offset, " len ", len,
             " is not inside a FILE region this agent serves");
}

Staging FileServer::acquire() {
  if (!free_.empty()) {
    Staging s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  return Staging(static_cast<char*>(std::aligned_alloc(4096, kFileChunkBytes)));
}

void FileServer::release(Staging s) {
  if (s && free_.size() < kKeepFree) free_.push_back(std::move(s));
}

Status FileServer::run(uint64_t fd, kvbm::detail::FileOp op) {
  if (fd > INT_MAX) {
    return err(ErrorCode::InvalidArgument, "file fd ", fd, " offset ", op.offset,
               ": not a file descriptor");
  }
  op.fd = static_cast<int>(fd);
  if (!batch_) {
    auto b = kvbm::detail::UringBatch::create(8);
    if (!b) return b.error();
    batch_ = std::move(*b);
  }
  return batch_->run({&op, 1});
}

Status FileServer::read(uint64_t fd, uint64_t offset, char* buf, uint64_t len) {
  return run(fd, {kvbm::detail::FileOp::Kind::Read, -1, offset, buf, len});
}

Status FileServer::write(uint64_t fd, uint64_t offset, const char* buf, uint64_t len) {
  return run(fd, {kvbm::detail::FileOp::Kind::Write, -1, offset, const_cast<char*>(buf), len});
}

}  // namespace kvbm::xfer::detail
