#include "xfer/backends/ucx/file_server.h"

#include <climits>

namespace kvbm::xfer::detail {

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
