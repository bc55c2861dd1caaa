// libFuzzer target for the backends' own wire parts, all from peers: a DRAM region's
// remote info (same_host.h), the same-host line of a peer's connection data, the headers
// of notifications (notifications.h), the chunk request, reply and poll headers of the
// chunked staging protocol (ucx_common/staging_wire.h) that remote files and the CUDA
// staged path speak, and the request and reply headers of UCX RMA over active messages
// (am_rma_wire.h). The first byte picks the decoder (for notifications the next two give
// the body's length; for chunk requests the next gives the receiver's chunk size, as a
// power of two; a reply's bytes are also read as a poll; for RMA headers the next two give the
// body's length and the third whether it came by rendezvous). Any input must decode or fail with
// its decoder's error code (InvalidArgument; Remote for the staging and RMA headers, which blame
// the peer) and a message, never crash; whatever decodes must survive a round trip through its
// encoder.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "xfer/backends/ucx/am_rma_wire.h"
#include "xfer/backends/ucx/notifications.h"
#include "xfer/backends/ucx/same_host.h"
#include "xfer/ucx_common/staging_wire.h"

namespace {

using namespace kvbm::xfer::detail;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "ucx_wire_fuzz: %s\n", what.c_str());
  std::abort();
}

template <typename T>
void check_error(const kvbm::Result<T>& r, const char* how,
                 kvbm::ErrorCode expected = kvbm::ErrorCode::InvalidArgument) {
  if (r.code() != expected)
    fail(std::string(how) + ": unexpected error code: " + r.error().to_string());
  if (r.error().message.empty()) fail(std::string(how) + ": error without a message");
}

void region_info(std::string_view in) {
  auto d = decode_region_info(in);
  if (!d) return check_error(d, "region info");
  if (d->rkey.empty()) fail("region info: decoded an empty key");
  auto again = decode_region_info(encode_region_info(*d));
  if (!again || again->rkey != d->rkey || again->file.has_value() != d->file.has_value() ||
      (d->file && (again->file->fd != d->file->fd || again->file->dev != d->file->dev ||
                   again->file->ino != d->file->ino || again->file->offset != d->file->offset)))
    fail("region info: round trip changed it");
}

void same_host_line(std::string_view in) {
  auto p = parse_same_host_line(in);
  if (p && p->pid <= 0) fail("same-host line: decoded pid <= 0");
}

void chunk_request(std::string_view in) {
  if (in.empty()) return;
  const uint64_t max_len = uint64_t{1} << (static_cast<uint8_t>(in[0]) % 64);
  auto d = staging::decode_chunk_request(in.substr(1), max_len);
  if (!d) return check_error(d, "chunk request", kvbm::ErrorCode::Remote);
  if (d->len == 0 || d->len > max_len || d->addr + d->len < d->addr)
    fail("chunk request: decoded a length out of bounds");
  auto again = staging::decode_chunk_request(staging::encode(*d), max_len);
  if (!again || again->op != d->op || again->space != d->space || again->xfer != d->xfer ||
      again->seq != d->seq || again->dev != d->dev || again->addr != d->addr ||
      again->len != d->len || again->token != d->token)
    fail("chunk request: round trip changed it");
}

void chunk_reply(std::string_view in) {
  auto d = staging::decode_chunk_reply(in);
  if (!d) return check_error(d, "chunk reply", kvbm::ErrorCode::Remote);
  if (int{d->busy} + int{d->error.has_value()} + int{d->poll_end} > 1)
    fail("chunk reply: more than one of busy, an error and a poll's end");
  auto again = staging::decode_chunk_reply(staging::encode(*d));
  if (!again || again->xfer != d->xfer || again->seq != d->seq || again->error != d->error ||
      again->busy != d->busy || again->poll_end != d->poll_end)
    fail("chunk reply: round trip changed it");
}

void chunk_poll(std::string_view in) {
  auto d = staging::decode_chunk_poll(in);
  if (!d) return check_error(d, "chunk poll", kvbm::ErrorCode::Remote);
  auto again = staging::decode_chunk_poll(staging::encode(*d));
  if (!again || again->token != d->token) fail("chunk poll: round trip changed it");
}

void notification(std::string_view in, bool rndv) {
  if (in.size() < 2) return;
  const size_t body = static_cast<uint8_t>(in[0]) | size_t{static_cast<uint8_t>(in[1])} << 16;
  auto d = ucx::decode_notif_header(in.substr(2), body, rndv);
  if (!d) return check_error(d, "notification header");
  if (d->sender.empty() || d->sender.size() != d->h.name_len) fail("notification: bad sender");
  auto again = ucx::decode_notif_header(
      ucx::encode_notif_header(d->sender, d->h.connection, d->h.seq), body, rndv);
  if (!again || again->sender != d->sender || again->h.seq != d->h.seq ||
      again->h.connection != d->h.connection)
    fail("notification: round trip changed it");
}

void am_rma(std::string_view in, bool reply) {
  if (in.size() < 3) return;
  const size_t body = static_cast<uint8_t>(in[0]) | size_t{static_cast<uint8_t>(in[1])} << 8;
  const bool rndv = (in[2] & 1) != 0;
  const std::string_view h = in.substr(3);
  (void)am_rma_header_id(h, reply);
  char again[kAmRmaHeaderBytes];
  if (!reply) {
    auto d = decode_am_rma_request(h, body, rndv);
    if (!d) return check_error(d, "RMA request", kvbm::ErrorCode::Remote);
    if (d->len == 0 || (d->op == kvbm::xfer::Op::Read && body != 0) ||
        (d->op == kvbm::xfer::Op::Write && body != d->len))
      fail("RMA request: decoded a body of another length than its header's");
    encode(*d, again);
    auto r = decode_am_rma_request(std::string_view(again, sizeof again), body, rndv);
    if (!r || r->op != d->op || r->id != d->id || r->addr != d->addr || r->len != d->len)
      fail("RMA request: round trip changed it");
    return;
  }
  auto d = decode_am_rma_reply(h, body, rndv);
  if (!d) return check_error(d, "RMA reply", kvbm::ErrorCode::Remote);
  if ((d->kind == AmRmaReplyKind::Data && body != d->len) ||
      (d->kind == AmRmaReplyKind::Ack && body != 0) ||
      (d->kind == AmRmaReplyKind::Error && (rndv || body > kMaxAmRmaErrorBytes)))
    fail("RMA reply: decoded a body its header does not allow");
  encode(*d, again);
  auto r = decode_am_rma_reply(std::string_view(again, sizeof again), body, rndv);
  if (!r || r->kind != d->kind || r->id != d->id || r->len != d->len ||
      (d->kind == AmRmaReplyKind::Error && r->error != d->error))
    fail("RMA reply: round trip changed it");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0:
      region_info(in);
      break;
    case 1:
      same_host_line(in);
      break;
    case 2:
      chunk_request(in);
      break;
    case 3:
      chunk_reply(in);
      chunk_poll(in);
      break;
    case 4:
    case 5:
      notification(in, data[0] % 8 == 5);
      break;
    default:
      am_rma(in, data[0] % 8 == 7);
      break;
  }
  return 0;
}
