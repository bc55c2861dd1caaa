// The UCX backend's fast path between processes of one host. UCX 1.13's shared-memory
// transports reach only memory UCX allocated itself, so a put or get on a caller's buffer
// is emulated with active messages and costs the target's CPU on every transfer. Two
// faster ways reach a peer's registered memory directly, both checked before use:
//
//   mapping  the peer's region lives in a memory file (SystemStorage's memfd): we open it
//            through /proc/<pid>/fd/<n>, check that it is the file the peer published
//            (device and inode), map it, and copy with memcpy, as UCX does in its own
//            shared segments;
//   CMA      any other region: process_vm_readv / process_vm_writev, one system call for
//            up to 1024 descriptors.
//
// Both need the kernel's permission to inspect the peer (same user, or CAP_SYS_PTRACE);
// without it, or when UCX_TLS leaves out shared memory, the backend uses UCX as before.
// A peer proves it is the process we think it is by a random token we read from its
// memory; a pidfd tells when it has exited (so a reused pid is never written to).
//
// The wire parts (connection line, region info) come from the network: parsed with
// bounds checks. Thread safety: SameHostPeer and SharedMapping are immutable after
// creation and may be used from any thread.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

// How far the same-host path may go: "auto" (mapping, else CMA), "cma" (CMA only),
// "off" (UCX only). From the backend's `same_host` parameter, else the environment's
// KVBM_UCX_SAME_HOST, else auto.
enum class SameHostMode { Auto, Cma, Off };
Result<SameHostMode> parse_same_host_mode(std::string_view text);

// This process, as a peer on the same host sees it: "<pid> <token address> <token>".
class SameHostSelf {
 public:
  SameHostSelf();
  const std::string& line() const { return line_; }

 private:
  uint64_t token_[2];
  std::string line_;
};

// A same-host line, parsed (bounds-checked: it comes from the network); nullopt when
// malformed.
struct SameHostLine {
  pid_t pid = 0;
  uint64_t token_addr = 0;
  uint64_t token[2] = {0, 0};
};
std::optional<SameHostLine> parse_same_host_line(std::string_view line);

// A peer process on this host, reached and verified.
class SameHostPeer {
 public:
  // Parses the peer's line and reads its token through CMA; nullopt (with `why`) when
  // the peer cannot be reached that way.
  static std::shared_ptr<SameHostPeer> reach(std::string_view line, std::string* why);
  ~SameHostPeer();

  pid_t pid() const { return pid_; }
  // Whether the process has exited (its pidfd is readable; without pidfd support,
  // whether the pid no longer answers with the same token). A system call, so the
  // answer "alive" is reused for up to 1 ms: a pid is not recycled that fast.
  bool exited() const;
  // Copies between our memory and the peer's: `local[i]` <-> `remote[i]`, equal lengths.
  // Remote errors name the peer; EFAULT means the peer's range is not mapped (any more).
  Status copy(Op op, const std::vector<iovec>& local, const std::vector<iovec>& remote) const;

 private:
  SameHostPeer(pid_t pid, int pidfd, uint64_t token_addr, const uint64_t token[2]);
  bool token_matches() const;

  const pid_t pid_;
  const int pidfd_;  // -1 where pidfd_open is unavailable
  const uint64_t token_addr_;
  uint64_t token_[2];
  mutable std::atomic<int64_t> alive_until_ns_{0};  // CLOCK_MONOTONIC_COARSE
};

// A DRAM region's UCX remote info: the packed remote key and, for a region inside a
// memory file, where that file is. Encoded as "KVU2", a flag byte, the file fields when
// flagged, then the key.
struct SharedFileRef {
  int32_t fd = -1;   // in the owner's process
  uint64_t dev = 0;  // st_dev and st_ino of the file, checked after opening it
  uint64_t ino = 0;
  uint64_t offset = 0;  // of the region's first byte in the file
};
struct DramRegionInfo {
  std::optional<SharedFileRef> file;
  std::string rkey;
};
std::string encode_region_info(const DramRegionInfo& info);
Result<DramRegionInfo> decode_region_info(std::string_view bytes);

// A peer's region mapped into this process.
class SharedMapping {
 public:
  // Opens the peer's file, checks its identity, maps `len` bytes of the region.
  static Result<std::shared_ptr<SharedMapping>> map(const SameHostPeer& peer,
                                                    const SharedFileRef& ref, uint64_t len);
  ~SharedMapping();
  // The local address of the region's byte at `offset`.
  char* at(uint64_t offset) const { return region_ + offset; }

 private:
  SharedMapping(void* base, size_t len, char* region) : base_(base), len_(len), region_(region) {}
  void* base_;
  size_t len_;
  char* region_;
};

// The identity of an open file, for SharedFileRef.
Result<SharedFileRef> describe_shared_file(int fd, uint64_t offset);

}  // namespace kvbm::xfer::detail
