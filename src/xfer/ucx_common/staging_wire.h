// The wire form of the chunked staging protocol ("chunks in flight through a pool of
// staging buffers, one reply per chunk"), spoken by the UCX backend's peer files and the
// CUDA backend's staged path over UCX active messages. The initiator
// asks the target to READ or WRITE one chunk of its memory or file (a WRITE's bytes ride
// along); the target answers each chunk once: with the bytes (READ), an empty body
// (WRITE, sent once the bytes are in place), an error whose text is the body, or "busy"
// (no staging buffer was free for a WRITE's bytes: the initiator sends the chunk again).
// A target answers a chunk at once, inside the callback of its request, or, where the
// answer comes later (after file I/O), only inside the callback of a poll the initiator
// sends (ChunkPoll): UCX keeps the endpoint a message came on valid only for as long as
// its callback runs (staging_owed.h says why, staging_poll.h how the initiator paces
// its polls). Headers are fixed-size, versioned, and decoded with bounds checks: they
// come from peers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail::staging {

constexpr uint16_t kWireVersion = 2;
// Error texts in replies are cut to this length.
constexpr size_t kMaxErrorBytes = 1024;

// One chunk as the initiator asks for it.
struct ChunkRequest {
  Op op = Op::Read;
  MemType space = MemType::Dram;  // what the target's (dev, addr) name: memory or a file
  uint64_t xfer = 0;              // the initiator's transfer id
  uint64_t seq = 0;               // the chunk's index in that transfer
  uint64_t dev = 0;               // the target's device, or its file's fd
  uint64_t addr = 0;              // the address, or the offset in the file
  uint64_t len = 0;               // bytes: 1 .. the target's chunk size
  // The initiator's connection: a later answer goes only to a poll that carries it.
  uint64_t token = 0;
};

// The target's one answer to a chunk.
struct ChunkReply {
  uint64_t xfer = 0;
  uint64_t seq = 0;
  // nullopt: success (a READ's body holds the bytes); else the error, its text the body.
  std::optional<ErrorCode> error;
  // No staging buffer was free: the chunk was not served; send it again later (no body).
  bool busy = false;
  // The end of the answer to a poll (no body): xfer is the poll's token, seq the number
  // of replies the answer sent before it.
  bool poll_end = false;
};

// The initiator asks for the answers owed to its connection `token`.
struct ChunkPoll {
  uint64_t token = 0;
};

std::string encode(const ChunkRequest& h);
std::string encode(const ChunkReply& h);
std::string encode(const ChunkPoll& h);
// Remote errors naming what is wrong: the size, magic, version, op or memory type, a
// length of 0 or over `max_len`, an addr + len that overflows.
Result<ChunkRequest> decode_chunk_request(std::string_view bytes, uint64_t max_len);
// Remote errors naming the size, magic, version or an unknown error code.
Result<ChunkReply> decode_chunk_reply(std::string_view bytes);
// Remote errors naming the size, magic or version.
Result<ChunkPoll> decode_chunk_poll(std::string_view bytes);

}  // namespace kvbm::xfer::detail::staging
