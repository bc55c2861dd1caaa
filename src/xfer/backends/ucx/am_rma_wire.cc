#include "xfer/backends/ucx/am_rma_wire.h"

#include <cstring>

namespace kvbm::xfer::detail {
namespace {

constexpr uint32_t kRequestMagic = 0x4b565231;  // "KVR1"
constexpr uint32_t kReplyMagic = 0x4b565232;    // "KVR2"

// Fixed layouts, host byte order: both ends run this build on machines of one kind.
struct RequestWire {
  uint32_t magic;
  uint16_t version;
  uint8_t op;
  uint8_t pad;
  uint64_t id, addr, len;
};
struct ReplyWire {
  uint32_t magic;
  uint16_t version;
  uint8_t kind;
  uint8_t pad;
  int32_t code;
  uint32_t pad2;
  uint64_t id, len;
};
static_assert(sizeof(RequestWire) == kAmRmaHeaderBytes && sizeof(ReplyWire) == kAmRmaHeaderBytes);

}  // namespace

void encode(const AmRmaRequest& h, char* out) {
  RequestWire w{};
  w.magic = kRequestMagic;
  w.version = kAmRmaWireVersion;
  w.op = h.op == Op::Write ? 1 : 0;
  w.id = h.id;
  w.addr = h.addr;
  w.len = h.len;
  std::memcpy(out, &w, sizeof w);
}

void encode(const AmRmaReply& h, char* out) {
  ReplyWire w{};
  w.magic = kReplyMagic;
  w.version = kAmRmaWireVersion;
  w.kind = static_cast<uint8_t>(h.kind);
  w.code = h.kind == AmRmaReplyKind::Error ? static_cast<int32_t>(h.error) : 0;
  w.id = h.id;
  w.len = h.kind == AmRmaReplyKind::Data ? h.len : 0;
  std::memcpy(out, &w, sizeof w);
}

Result<AmRmaRequest> decode_am_rma_request(std::string_view header, size_t body_len, bool rndv) {
  RequestWire w{};
  if (header.size() != sizeof w) {
    return err(ErrorCode::Remote, "RMA request header of ", header.size(), " bytes, expected ",
               sizeof w);
  }
  std::memcpy(&w, header.data(), sizeof w);
  if (w.magic != kRequestMagic) return err(ErrorCode::Remote, "RMA request has a bad magic");
  if (w.version != kAmRmaWireVersion) {
    return err(ErrorCode::Remote, "RMA request of wire version ", w.version, ", this build speaks ",
               kAmRmaWireVersion);
  }
  if (w.op > 1) return err(ErrorCode::Remote, "RMA request with unknown op ", int{w.op});
  if (w.len == 0) return err(ErrorCode::Remote, "RMA request of 0 bytes");
  if (w.addr + w.len < w.addr)
    return err(ErrorCode::Remote, "RMA request address ", w.addr, " + ", w.len, " overflows");
  const bool write = w.op == 1;
  if (!write && (body_len != 0 || rndv)) {
    return err(ErrorCode::Remote, "RMA READ request carries ", body_len, " bytes of body");
  }
  if (write && body_len != w.len) {
    return err(ErrorCode::Remote, "RMA WRITE request of ", w.len, " bytes carries ", body_len);
  }
  return AmRmaRequest{write ? Op::Write : Op::Read, w.id, w.addr, w.len};
}

Result<AmRmaReply> decode_am_rma_reply(std::string_view header, size_t body_len, bool rndv) {
  ReplyWire w{};
  if (header.size() != sizeof w) {
    return err(ErrorCode::Remote, "RMA reply header of ", header.size(), " bytes, expected ",
               sizeof w);
  }
  std::memcpy(&w, header.data(), sizeof w);
  if (w.magic != kReplyMagic) return err(ErrorCode::Remote, "RMA reply has a bad magic");
  if (w.version != kAmRmaWireVersion) {
    return err(ErrorCode::Remote, "RMA reply of wire version ", w.version, ", this build speaks ",
               kAmRmaWireVersion);
  }
  AmRmaReply h;
  h.id = w.id;
  switch (w.kind) {
    case static_cast<uint8_t>(AmRmaReplyKind::Ack):
      h.kind = AmRmaReplyKind::Ack;
      if (body_len != 0 || rndv || w.len != 0)
        return err(ErrorCode::Remote, "RMA ack carries ", body_len, " bytes of body");
      return h;
    case static_cast<uint8_t>(AmRmaReplyKind::Data):
      h.kind = AmRmaReplyKind::Data;
      h.len = w.len;
      if (w.len == 0 || body_len != w.len)
        return err(ErrorCode::Remote, "RMA data reply of ", w.len, " bytes carries ", body_len);
      return h;
    case static_cast<uint8_t>(AmRmaReplyKind::Error):
      h.kind = AmRmaReplyKind::Error;
      if (w.code < 0 || w.code > static_cast<int32_t>(ErrorCode::Internal))
        return err(ErrorCode::Remote, "RMA reply with unknown error code ", w.code);
      if (rndv || body_len > kMaxAmRmaErrorBytes || w.len != 0)
        return err(ErrorCode::Remote, "RMA error reply with ", body_len, " bytes of text");
      h.error = static_cast<ErrorCode>(w.code);
      return h;
    default:
      return err(ErrorCode::Remote, "RMA reply of unknown kind ", int{w.kind});
  }
}

std::optional<uint64_t> am_rma_header_id(std::string_view header, bool reply) {
  if (header.size() != kAmRmaHeaderBytes) return std::nullopt;
  if (reply) {
    ReplyWire w{};
    std::memcpy(&w, header.data(), sizeof w);
    if (w.magic != kReplyMagic || w.version != kAmRmaWireVersion) return std::nullopt;
    return w.id;
  }
  RequestWire w{};
  std::memcpy(&w, header.data(), sizeof w);
  if (w.magic != kRequestMagic || w.version != kAmRmaWireVersion) return std::nullopt;
  return w.id;
}

}  // namespace kvbm::xfer::detail
