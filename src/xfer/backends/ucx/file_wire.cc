#include "xfer/backends/ucx/file_wire.h"

#include <cstring>

namespace kvbm::xfer::detail {
namespace {

constexpr uint32_t kRequestMagic = 0x4b564631;  // "KVF1"
constexpr uint32_t kReplyMagic = 0x4b564632;    // "KVF2"
constexpr int32_t kNoError = -1;
constexpr int32_t kBusy = -2;

// Fixed layouts, host byte order: both ends run this build on machines of one kind.
struct RequestWire {
  uint32_t magic;
  uint16_t version;
  uint8_t op;
  uint8_t pad;
  uint64_t xfer, seq, fd, offset, len;
};
struct ReplyWire {
  uint32_t magic;
  uint16_t version;
  uint16_t pad;
  int32_t code;
  uint32_t pad2;
  uint64_t xfer, seq;
};

template <typename T>
std::string bytes_of(const T& t) {
  return std::string(reinterpret_cast<const char*>(&t), sizeof t);
}

}  // namespace

std::string encode(const FileRequestHeader& h) {
  RequestWire w{};
  w.magic = kRequestMagic;
  w.version = kFileWireVersion;
  w.op = h.op == Op::Write ? 1 : 0;
  w.xfer = h.xfer;
  w.seq = h.seq;
  w.fd = h.fd;
  w.offset = h.offset;
  w.len = h.len;
  return bytes_of(w);
}

std::string encode(const FileReplyHeader& h) {
  ReplyWire w{};
  w.magic = kReplyMagic;
  w.version = kFileWireVersion;
  w.code = h.busy ? kBusy : h.error ? static_cast<int32_t>(*h.error) : kNoError;
  w.xfer = h.xfer;
  w.seq = h.seq;
  return bytes_of(w);
}

Result<FileRequestHeader> decode_file_request(std::string_view bytes) {
  RequestWire w{};
  if (bytes.size() != sizeof w) {
    return err(ErrorCode::Remote, "file request header of ", bytes.size(), " bytes, expected ",
               sizeof w);
  }
  std::memcpy(&w, bytes.data(), sizeof w);
  if (w.magic != kRequestMagic) return err(ErrorCode::Remote, "file request has a bad magic");
  if (w.version != kFileWireVersion) {
    return err(ErrorCode::Remote, "file request of wire version ", w.version,
               ", this build speaks ", kFileWireVersion);
  }
  if (w.op > 1) return err(ErrorCode::Remote, "file request with unknown op ", int{w.op});
  if (w.len == 0 || w.len > kFileChunkBytes) {
    return err(ErrorCode::Remote, "file request of ", w.len, " bytes; a chunk holds 1 to ",
               kFileChunkBytes);
  }
  if (w.offset + w.len < w.offset)
    return err(ErrorCode::Remote, "file request offset ", w.offset, " + ", w.len, " overflows");
  return FileRequestHeader{w.op == 1 ? Op::Write : Op::Read, w.xfer, w.seq, w.fd, w.offset, w.len};
}

Result<FileReplyHeader> decode_file_reply(std::string_view bytes) {
  ReplyWire w{};
  if (bytes.size() != sizeof w) {
    return err(ErrorCode::Remote, "file reply header of ", bytes.size(), " bytes, expected ",
               sizeof w);
  }
  std::memcpy(&w, bytes.data(), sizeof w);
  if (w.magic != kReplyMagic) return err(ErrorCode::Remote, "file reply has a bad magic");
  if (w.version != kFileWireVersion) {
    return err(ErrorCode::Remote, "file reply of wire version ", w.version, ", this build speaks ",
               kFileWireVersion);
  }
  FileReplyHeader h{w.xfer, w.seq, std::nullopt};
  if (w.code == kBusy) {
    h.busy = true;
  } else if (w.code != kNoError) {
    if (w.code < 0 || w.code > static_cast<int32_t>(ErrorCode::Internal))
      return err(ErrorCode::Remote, "file reply with unknown error code ", w.code);
    h.error = static_cast<ErrorCode>(w.code);
  }
  return h;
}

}  // namespace kvbm::xfer::detail
