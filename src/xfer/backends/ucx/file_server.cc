#include "xfer/backends/ucx/file_server.h"

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
  std::lock_guard<std::mutex> lock(mu_);
  --in_use_;
  if (free_.size() < kKeepFree) {
    free_.push_back(p);
  } else {
    std::free(p);
  }
}

void FileServer::add(const Desc& region) {
  auto r = std::make_shared<Region>(Region{file_id_of(region.dev_id)});
  std::lock_guard<std::mutex> lock(mu_);
  regions_[{region.dev_id, region.addr, region.len}] = std::move(r);
}

void FileServer::remove(const Desc& region) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = regions_.find({region.dev_id, region.addr, region.len});
  if (it == regions_.end()) return;
  std::shared_ptr<Region> r = std::move(it->second);
  regions_.erase(it);
  // Pinned for its I/O in progress: the fd must stay open until that I/O ends.
  cv_.wait(lock, [&] { return r->busy == 0; });
}

Status FileServer::check(uint64_t fd, uint64_t offset, uint64_t len) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = find(fd, offset, len);
  if (!r) return r.error();
  return {};
}

Result<std::shared_ptr<FileServer::Region>> FileServer::find(uint64_t fd, uint64_t offset,
                                                             uint64_t len) const {
  // The last region of fd starting at or before offset; regions of one agent never overlap.
  auto it = regions_.upper_bound({fd, offset, UINT64_MAX});
  if (it != regions_.begin()) {
    --it;
    const auto& [rfd, roff, rlen] = it->first;
    if (rfd == fd && fd <= INT_MAX && offset >= roff && len <= rlen &&
        offset - roff <= rlen - len) {
      KVBM_TRY(check_file_id(it->second->id, fd, offset, len));
      return it->second;
    }
  }
  return err(ErrorCode::OutOfBounds, "file fd ", fd, " offset ", offset, " len ", len,
             " is not inside a FILE region this agent serves");
}

Staging FileServer::acquire(bool* at_cap) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (at_cap != nullptr) *at_cap = in_use_ >= max_staging_;
    if (in_use_ >= max_staging_) return Staging(nullptr, {this});
    if (!free_.empty()) {
      char* p = free_.back();
      free_.pop_back();
      ++in_use_;
      return Staging(p, {this});
    }
    ++in_use_;  // counted before the allocation, so the cap holds across threads
  }
  auto* p = static_cast<char*>(std::aligned_alloc(4096, kFileChunkBytes));
  if (p == nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
  }
  return Staging(p, {this});
}

size_t FileServer::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

void FileServer::unpin(const std::shared_ptr<Region>& r) {
  std::lock_guard<std::mutex> lock(mu_);
  if (--r->busy == 0) cv_.notify_all();
}

Result<FileServer::Pin> FileServer::pin(uint64_t fd, uint64_t offset, uint64_t len) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = find(fd, offset, len);
  if (!r) return r.error();
  ++(*r)->busy;  // remove() waits for it
  return Pin(this, std::move(*r));
}

}  // namespace kvbm::xfer::detail
