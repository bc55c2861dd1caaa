// The remote-file path's use of the chunked staging protocol (ucx_common/staging_wire.h):
// a peer asks the owner of a FILE region to read or write one chunk (space File, dev the
// owner's fd, addr the offset in the file); the owner replies with the bytes (READ), an
// empty body (WRITE, once the bytes are in the file), an error text, or "busy" (a WRITE
// that found no free staging buffer: the peer resends it). A reply ready only after the
// request's callback (a served chunk's) goes inside the callback of the peer's poll.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvbm::xfer::detail {

constexpr unsigned kFileRequestAmId = 8;
constexpr unsigned kFileReplyAmId = 9;
constexpr unsigned kFilePollAmId = 13;
// The most bytes one chunk carries (and so one staging buffer at the owner holds).
constexpr uint64_t kFileChunkBytes = 1 << 20;
// Chunks of one request in flight at once: the owner stages at most this many per request.
constexpr size_t kFileWindow = 4;

}  // namespace kvbm::xfer::detail
