// Remote files, the initiator's side of the chunked staging protocol (staging_window.h
// keeps the accounting). The initiator sends each chunk as an active message (a WRITE's
// bytes ride along) and keeps up to kFileWindow of a transfer in flight; the owner
// (file_service.h) answers each chunk, a READ's bytes riding along, inside the callback
// of the initiator's polls (staging_poll.h paces them; staging_owed.h says why). The
// owner's staging memory is capped: a WRITE whose bytes find no buffer there is answered
// "busy" and resent after a short wait.
//
// Thread safety: every member runs with the backend's lock held.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"
#include "xfer/backends/ucx/file_wire.h"
#include "xfer/ucx_common/staging_poll.h"
#include "xfer/ucx_common/staging_window.h"

namespace kvbm::xfer::detail::ucx {

class UcxBackend;
struct UcxPeer;
struct PostState;

// One chunk of a transfer with a peer's file: local bytes <-> (fd, offset) at the owner.
struct FileChunk {
  char* local;
  uint64_t fd;
  uint64_t offset;
  uint64_t len;
};

// The initiator's state of one posted file transfer, keyed by id in the backend.
struct FileXfer {
  uint64_t id = 0;
  Op op = Op::Read;
  std::shared_ptr<PostState> c;
  std::shared_ptr<const std::vector<FileChunk>> chunks;
  staging::Window w{0};  // set by FileClient::start
  // Chunk requests UCX has not finished sending (a WRITE's read the local bytes).
  size_t sending = 0;
};

class FileClient {
 public:
  explicit FileClient(UcxBackend& backend) : backend_(backend) {}
  // A new transfer's id.
  uint64_t next_id() { return next_++; }
  // Lists the transfer and sends its first chunks (x->chunks set).
  void start(const std::shared_ptr<FileXfer>& x);
  // Unlists a transfer (cancelled, or reposted): replies that still arrive touch nothing.
  void forget(uint64_t id) { xfers_.erase(id); }
  // Fails every transfer with `peer`, whose connection failed or closed.
  void fail_peer(const std::shared_ptr<UcxPeer>& peer);
  bool has_resends() const { return !resends_.empty(); }
  // Resends the chunks of the transfers whose wait is over.
  void resend_due();
  bool has_outstanding() const { return !outstanding_.empty(); }
  // Polls the owners that owe chunks' replies, as staging_poll.h paces it.
  void poll_due();
  void on_reply(std::string_view header, const char* body, size_t len, bool rndv);

 private:
  void pump(const std::shared_ptr<FileXfer>& x);
  void fail(FileXfer& x, Error e);

  UcxBackend& backend_;
  std::map<uint64_t, std::shared_ptr<FileXfer>> xfers_;
  std::set<uint64_t> resends_;                 // ids of xfers_ with chunks to resend (or gone)
  staging::Outstanding<UcxPeer> outstanding_;  // chunk requests not yet answered
  staging::Polls polls_;                       // by the peer's connection token
  uint64_t next_ = 1;
};

}  // namespace kvbm::xfer::detail::ucx
