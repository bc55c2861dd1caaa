// The wire form of the UCX backend's RMA over active messages (am_rma.h): an initiator's
// request (READ: "send me len bytes from addr"; WRITE: "put these len bytes at addr",
// the bytes as the message's body) and the target's reply (a WRITE's ack once the bytes
// are in place, a READ's bytes as the body, or an error with its text as the body).
// Headers are fixed-size, versioned, and decoded with bounds checks: they come from the
// network. A decoder also checks the body's length and how it came (rendezvous or not)
// against what the header says, so a caller never writes more than the header allows.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

constexpr unsigned kAmRmaRequestAmId = 10;
constexpr unsigned kAmRmaReplyAmId = 11;
constexpr uint16_t kAmRmaWireVersion = 1;
// Error texts in replies are cut to this length.
constexpr size_t kMaxAmRmaErrorBytes = 1024;
// The encoded size of either header.
constexpr size_t kAmRmaHeaderBytes = 32;

struct AmRmaRequest {
  Op op = Op::Read;
  uint64_t id = 0;    // the initiator's operation id, echoed in the reply
  uint64_t addr = 0;  // at the target
  uint64_t len = 0;   // >= 1; a WRITE's body carries exactly this many bytes
};

enum class AmRmaReplyKind : uint8_t {
  Ack,    // a WRITE's bytes are in place at the target; no body
  Data,   // a READ's bytes: the body, exactly `len` of them
  Error,  // the operation was refused: `error`, its text the body
};

struct AmRmaReply {
  AmRmaReplyKind kind = AmRmaReplyKind::Ack;
  uint64_t id = 0;
  uint64_t len = 0;                     // Data: the body's length; else 0
  ErrorCode error = ErrorCode::Remote;  // Error only
};

// Writes the header into out[kAmRmaHeaderBytes].
void encode(const AmRmaRequest& h, char* out);
void encode(const AmRmaReply& h, char* out);

// The header of a request whose body holds body_len bytes (rendezvous: UCX fetches them
// on demand). Remote, naming what is wrong: a size, magic or version not ours, an unknown
// op, a length of 0 or one whose end overflows, a READ with a body, a WRITE whose body is
// not `len` bytes.
Result<AmRmaRequest> decode_am_rma_request(std::string_view header, size_t body_len, bool rndv);
// The header of a reply with body_len bytes of body. Remote, naming what is wrong: a
// size, magic or version not ours, an unknown kind or error code, an ack with a body, a
// Data reply whose body is not `len` bytes, an error text by rendezvous or too long.
Result<AmRmaReply> decode_am_rma_reply(std::string_view header, size_t body_len, bool rndv);

// The operation id of a request's (`reply` false) or a reply's header that failed to
// decode but has our size, magic and version: whom to answer, or whose wait to end.
std::optional<uint64_t> am_rma_header_id(std::string_view header, bool reply);

}  // namespace kvbm::xfer::detail
