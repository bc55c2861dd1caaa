// The owner's side of remote file transfers: the FILE regions this agent serves to peers
// (the staging buffers their chunks go through are file_service.h's). Errors name the
// file, the offset and the length.
//
// Thread safety: every member may be called from any thread. Regions are guarded by one
// mutex that no I/O holds, so a check never waits for a disk; remove() waits until the
// region's pins (its I/O in progress) are gone.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"
#include "xfer/backend_file_id.h"

namespace kvbm::xfer::detail {

class FileServer {
  struct Region;

 public:
  FileServer() = default;
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  // A FILE region (dev_id = fd, addr = offset) peers may read and write. The file the
  // fd refers to now is remembered: a number closed and reused for something else (a
  // socket, a pipe, another file) is refused rather than read.
  void add(const Desc& region);
  // Stops serving the region: later requests for it fail. Returns once no I/O on it is
  // in progress, so the caller may close the fd then.
  void remove(const Desc& region);
  // OutOfBounds unless [offset, offset + len) of fd lies inside one served region; Io
  // (naming fd and offset) when fd is closed or no longer the registered file.
  Status check(uint64_t fd, uint64_t offset, uint64_t len) const;

  // A served region held while I/O on it runs (remove() waits for it). Move-only.
  class Pin {
   public:
    Pin(FileServer* server, std::shared_ptr<Region> region)
        : server_(server), region_(std::move(region)) {}
    Pin(Pin&& o) noexcept = default;
    Pin& operator=(Pin&&) = delete;
    ~Pin() {
      if (region_) server_->unpin(region_);
    }

   private:
    FileServer* server_;
    std::shared_ptr<Region> region_;
  };
  // check()'s rules and errors; on success the region stays served until the pin goes.
  Result<Pin> pin(uint64_t fd, uint64_t offset, uint64_t len);

 private:
  struct Region {
    FileId id;        // the file fd referred to at registration
    size_t busy = 0;  // its pins
  };
  using Key = std::tuple<uint64_t, uint64_t, uint64_t>;  // fd, offset, len

  // The served region holding the range (check()'s rules); mu_ held.
  Result<std::shared_ptr<Region>> find(uint64_t fd, uint64_t offset, uint64_t len) const;
  void unpin(const std::shared_ptr<Region>& r);  // a pinned region's I/O ended

  mutable std::mutex mu_;       // regions_, Region::busy
  std::condition_variable cv_;  // a region's busy count fell to 0
  std::map<Key, std::shared_ptr<Region>> regions_;
};

}  // namespace kvbm::xfer::detail
