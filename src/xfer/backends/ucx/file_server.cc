#include "xfer/backends/ucx/file_server.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer::detail {

void StagingFree::operator()(char* p) const {
  server->recycle(p);
}

FileServer::~FileServer() {
  for (char* p : free_) std::free(p);
}

void FileServer::recycle(char* p) {
  --in_use_;
  if (free_.size() < kKeepFree) {
    free_.push_back(p);
  } else {
    std::free(p);
  }
}

void FileServer::add(const Desc& region) {
  struct stat st {};
  const bool known = region.dev_id <= INT_MAX && fstat(static_cast<int>(region.dev_id), &st) == 0;
  regions_[{region.dev_id, region.addr, region.len}] =
      FileId{known, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

void FileServer::remove(const Desc& region) {
  regions_.erase({region.dev_id, region.addr, region.len});
}

Status FileServer::check(uint64_t fd, uint64_t offset, uint64_t len) const {
  // The last region of fd starting at or before offset; regions of one agent never overlap.
  auto it = regions_.upper_bound({fd, offset, UINT64_MAX});
  if (it != regions_.begin()) {
    --it;
    const auto& [rfd, roff, rlen] = it->first;
    if (rfd == fd && offset >= roff && len <= rlen && offset - roff <= rlen - len) {
      struct stat st {};
      if (fstat(static_cast<int>(fd), &st) != 0) {
        const int e = errno;
        return err(ErrorCode::Io, "file fd ", fd, " offset ", offset, " len ", len, ": ",
                   std::strerror(e));
      }
      const FileId& id = it->second;
      if (id.known && (static_cast<uint64_t>(st.st_dev) != id.dev ||
                       static_cast<uint64_t>(st.st_ino) != id.ino)) {
        return err(ErrorCode::Io, "file fd ", fd, " offset ", offset, " len ", len,
                   ": fd no longer refers to the registered file (closed and reused?)");
      }
      return {};
    }
  }
  return err(ErrorCode::OutOfBounds, "file fd ", fd, " offset ", offset, " len ", len,
             " is not inside a FILE region this agent serves");
}

Staging FileServer::acquire(bool beyond_limit) {
  if (in_use_ >= kMaxStaging && !beyond_limit) return Staging(nullptr, {this});
  char* p = nullptr;
  if (!free_.empty()) {
    p = free_.back();
    free_.pop_back();
  } else {
    p = static_cast<char*>(std::aligned_alloc(4096, kFileChunkBytes));
    if (p == nullptr) return Staging(nullptr, {this});
  }
  ++in_use_;
  return Staging(p, {this});
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
