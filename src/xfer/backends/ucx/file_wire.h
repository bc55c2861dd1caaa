// The wire form of remote file transfers over UCX active messages: a peer asks the owner
// of a FILE region to read or write one chunk; the owner replies with the bytes (READ),
// or with an empty body (WRITE, sent once the bytes are in the file), or with an error
// text, or "busy" (a WRITE that found no free staging buffer: the peer resends it). Headers are
// fixed-size, versioned, and decoded with bounds checks: they come from the network.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

constexpr unsigned kFileRequestAmId = 8;
constexpr unsigned kFileReplyAmId = 9;
constexpr uint16_t kFileWireVersion = 1;
// The most bytes one chunk carries (and so one staging buffer at the owner holds).
constexpr uint64_t kFileChunkBytes = 1 << 20;
// Chunks of one request in flight at once: the owner stages at most this many per request.
constexpr size_t kFileWindow = 4;
// Error texts in replies are cut to this length.
constexpr size_t kMaxFileErrorBytes = 1024;

struct FileRequestHeader {
  Op op = Op::Read;
  uint64_t xfer = 0;    // the initiator's transfer id
  uint64_t seq = 0;     // the chunk's index in that transfer
  uint64_t fd = 0;      // the owner's file (its FILE descriptor's dev_id)
  uint64_t offset = 0;  // in the file
  uint64_t len = 0;     // bytes: 1 .. kFileChunkBytes; a WRITE's body carries them
};

struct FileReplyHeader {
  uint64_t xfer = 0;
  uint64_t seq = 0;
  // nullopt: success (a READ's body holds the bytes); else the error, its text the body.
  std::optional<ErrorCode> error;
  // The owner's staging memory is all in use: the chunk was not written; send it again
  // later (no body, no error).
  bool busy = false;
};

std::string encode(const FileRequestHeader& h);
std::string encode(const FileReplyHeader& h);
Result<FileRequestHeader> decode_file_request(std::string_view bytes);
Result<FileReplyHeader> decode_file_reply(std::string_view bytes);

}  // namespace kvbm::xfer::detail
