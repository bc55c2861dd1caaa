// The owner's side of remote file transfers: the FILE regions this agent serves to peers,
// and the reads and writes it does for them through staging buffers (io_uring, direct
// I/O where aligned). Errors name the file, the offset and the length.
//
// Thread safety: every member may be called from any thread. Regions and staging buffers
// are guarded by one mutex that no I/O holds, so a check or a staging buffer never waits
// for a disk; remove() waits until the region's pins (its I/O in progress) are gone.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"
#include "xfer/backend_file_id.h"

namespace kvbm::xfer::detail {

class FileServer;

// A page-aligned buffer of kFileChunkBytes that goes back to its server when dropped.
struct StagingFree {
  FileServer* server = nullptr;
  void operator()(char* p) const;
};
using Staging = std::unique_ptr<char, StagingFree>;

class FileServer {
  struct Region;

 public:
  // Staging buffers in use at once, at most, unless told otherwise: 64 MiB. A READ waits
  // for a buffer; a WRITE that finds none is answered "busy" and its peer resends it.
  static constexpr size_t kDefaultMaxStaging = 64;

  explicit FileServer(size_t max_staging = kDefaultMaxStaging) : max_staging_(max_staging) {}
  ~FileServer();
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

  // A staging buffer (reused; at most kKeepFree kept while idle), or null when
  // max_staging() are in use (then *at_cap is set, where given) or memory is short.
  Staging acquire(bool* at_cap = nullptr);
  size_t in_use() const;
  size_t max_staging() const { return max_staging_; }

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
  friend struct StagingFree;
  static constexpr size_t kKeepFree = 8;
  struct Region {
    FileId id;        // the file fd referred to at registration
    size_t busy = 0;  // its pins
  };
  using Key = std::tuple<uint64_t, uint64_t, uint64_t>;  // fd, offset, len

  void recycle(char* p);
  // The served region holding the range (check()'s rules); mu_ held.
  Result<std::shared_ptr<Region>> find(uint64_t fd, uint64_t offset, uint64_t len) const;
  void unpin(const std::shared_ptr<Region>& r);  // a pinned region's I/O ended

  const size_t max_staging_;
  mutable std::mutex mu_;       // regions_, free_, in_use_, Region::busy
  std::condition_variable cv_;  // a region's busy count fell to 0
  std::map<Key, std::shared_ptr<Region>> regions_;
  std::vector<char*> free_;
  size_t in_use_ = 0;
};

}  // namespace kvbm::xfer::detail
