#include "xfer/backends/cuda/staged_wire.h"

#include <cstring>

namespace kvbm::xfer::detail::cuda {

std::string encode(const ChunkHeader& h) {
  return std::string(reinterpret_cast<const char*>(&h), sizeof h);
}

std::string encode(const ReplyHeader& h) {
  return std::string(reinterpret_cast<const char*>(&h), sizeof h);
}

Result<ChunkHeader> decode_chunk_header(std::string_view bytes) {
  if (bytes.size() != sizeof(ChunkHeader)) {
    return err(ErrorCode::InvalidArgument, "staged chunk with a bad header");
  }
  ChunkHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic != kChunkMagic) return err(ErrorCode::InvalidArgument, "malformed staged chunk");
  return h;
}

Result<ReplyHeader> decode_reply_header(std::string_view bytes) {
  if (bytes.size() != sizeof(ReplyHeader)) {
    return err(ErrorCode::InvalidArgument, "staged message with a bad header");
  }
  ReplyHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  return h;
}

}  // namespace kvbm::xfer::detail::cuda
