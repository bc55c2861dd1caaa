#include "xfer/ucx_common/staging_wire.h"

#include <cstring>

namespace kvbm::xfer::detail::staging {
namespace {

constexpr uint32_t kRequestMagic = 0x4b565331;  // "KVS1"
constexpr uint32_t kReplyMagic = 0x4b565332;    // "KVS2"
constexpr uint32_t kPollMagic = 0x4b565333;     // "KVS3"
constexpr int32_t kNoError = -1;
constexpr int32_t kBusy = -2;
constexpr int32_t kPollEnd = -3;

// Fixed layouts, host byte order: both ends run this build on machines of one kind.
struct RequestWire {
  uint32_t magic;
  uint16_t version;
  uint8_t op;
  uint8_t space;
  uint64_t xfer, seq, dev, addr, len, token;
};
struct ReplyWire {
  uint32_t magic;
  uint16_t version;
  uint16_t pad;
  int32_t code;
  uint32_t pad2;
  uint64_t xfer, seq;
};
struct PollWire {
  uint32_t magic;
  uint16_t version;
  uint16_t pad;
  uint64_t token;
};

template <typename T>
std::string bytes_of(const T& t) {
  return std::string(reinterpret_cast<const char*>(&t), sizeof t);
}

// The fixed part both headers share: size, magic, version.
template <typename T>
Result<T> decode_fixed(std::string_view bytes, uint32_t magic, const char* what) {
  T w{};
  if (bytes.size() != sizeof w) {
    return err(ErrorCode::Remote, what, " header of ", bytes.size(), " bytes, expected ", sizeof w);
  }
  std::memcpy(&w, bytes.data(), sizeof w);
  if (w.magic != magic) return err(ErrorCode::Remote, what, " has a bad magic");
  if (w.version != kWireVersion) {
    return err(ErrorCode::Remote, what, " of wire version ", w.version, ", this build speaks ",
               kWireVersion);
  }
  return w;
}

}  // namespace

std::string encode(const ChunkRequest& h) {
  RequestWire w{};
  w.magic = kRequestMagic;
  w.version = kWireVersion;
  w.op = h.op == Op::Write ? 1 : 0;
  w.space = static_cast<uint8_t>(h.space);
  w.xfer = h.xfer;
  w.seq = h.seq;
  w.dev = h.dev;
  w.addr = h.addr;
  w.len = h.len;
  w.token = h.token;
  return bytes_of(w);
}

std::string encode(const ChunkPoll& h) {
  PollWire w{};
  w.magic = kPollMagic;
  w.version = kWireVersion;
  w.token = h.token;
  return bytes_of(w);
}

std::string encode(const ChunkReply& h) {
  ReplyWire w{};
  w.magic = kReplyMagic;
  w.version = kWireVersion;
  w.code = h.poll_end ? kPollEnd
           : h.busy   ? kBusy
           : h.error  ? static_cast<int32_t>(*h.error)
                      : kNoError;
  w.xfer = h.xfer;
  w.seq = h.seq;
  return bytes_of(w);
}

Result<ChunkRequest> decode_chunk_request(std::string_view bytes, uint64_t max_len) {
  auto d = decode_fixed<RequestWire>(bytes, kRequestMagic, "chunk request");
  if (!d) return d.error();
  const RequestWire& w = *d;
  if (w.op > 1) return err(ErrorCode::Remote, "chunk request with unknown op ", int{w.op});
  if (w.space >= static_cast<uint8_t>(MemType::Unknown))
    return err(ErrorCode::Remote, "chunk request with unknown memory type ", int{w.space});
  if (w.len == 0 || w.len > max_len) {
    return err(ErrorCode::Remote, "chunk request of ", w.len, " bytes; a chunk holds 1 to ",
               max_len);
  }
  if (w.addr + w.len < w.addr)
    return err(ErrorCode::Remote, "chunk request offset ", w.addr, " + ", w.len, " overflows");
  return ChunkRequest{w.op == 1 ? Op::Write : Op::Read,
                      static_cast<MemType>(w.space),
                      w.xfer,
                      w.seq,
                      w.dev,
                      w.addr,
                      w.len,
                      w.token};
}

Result<ChunkReply> decode_chunk_reply(std::string_view bytes) {
  auto d = decode_fixed<ReplyWire>(bytes, kReplyMagic, "chunk reply");
  if (!d) return d.error();
  const ReplyWire& w = *d;
  ChunkReply h{w.xfer, w.seq, std::nullopt};
  if (w.code == kPollEnd) {
    h.poll_end = true;
  } else if (w.code == kBusy) {
    h.busy = true;
  } else if (w.code != kNoError) {
    if (w.code < 0 || w.code > static_cast<int32_t>(ErrorCode::Internal))
      return err(ErrorCode::Remote, "chunk reply with unknown error code ", w.code);
    h.error = static_cast<ErrorCode>(w.code);
  }
  return h;
}

Result<ChunkPoll> decode_chunk_poll(std::string_view bytes) {
  auto d = decode_fixed<PollWire>(bytes, kPollMagic, "chunk poll");
  if (!d) return d.error();
  return ChunkPoll{d->token};
}

}  // namespace kvbm::xfer::detail::staging
