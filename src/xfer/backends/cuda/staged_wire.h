// The wire form of the CUDA backend's staged path: each chunk is a UCX active message
// whose header is a ChunkHeader (kAmPut carries a WRITE's bytes; kAmGet asks for a
// READ's) and whose answer's header is a ReplyHeader (kAmAck, kAmGetReply carrying the
// bytes; an error's text otherwise). Headers come from the network: decoded with size
// checks; the target then checks each range against its registered regions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/result.h"

namespace kvbm::xfer::detail::cuda {

constexpr uint32_t kChunkMagic = 0x4b564347;  // "KVCG"
enum : unsigned { kAmPut = 21, kAmGet = 22, kAmAck = 23, kAmGetReply = 24 };
constexpr size_t kMaxErrorBytes = 4096;

// A chunk of a staged transfer as the initiator asks for it: WRITE carries the bytes,
// READ asks for them. The target checks the range against its registered regions.
struct ChunkHeader {
  uint32_t magic;
  uint32_t mem_type;
  uint64_t op;
  uint64_t seq;
  uint64_t dev;
  uint64_t addr;
  uint64_t len;
};

// The target's answer: an ack (WRITE) or the bytes (READ); an error message otherwise.
struct ReplyHeader {
  uint32_t magic;
  int32_t code;  // -1: OK; else an ErrorCode
  uint64_t op;
  uint64_t seq;
};

std::string encode(const ChunkHeader& h);
std::string encode(const ReplyHeader& h);
// InvalidArgument "staged chunk with a bad header" (size) or "malformed staged chunk" (magic).
Result<ChunkHeader> decode_chunk_header(std::string_view bytes);
// InvalidArgument "staged message with a bad header" (size); the magic is the caller's to
// check (a reply with another one is a late answer to nothing, dropped quietly).
Result<ReplyHeader> decode_reply_header(std::string_view bytes);

}  // namespace kvbm::xfer::detail::cuda
