// An agent's metadata and its wire form: a versioned protobuf message (metadata.proto)
// inside a versioned envelope that carries its SHA-256 and, when the agent has an auth key,
// an HMAC-SHA256 made with it. Decoded with size limits and full validation, because the
// bytes come from the network: the envelope is checked (so corruption and forgery are
// errors) before a byte of the payload is parsed, and no backend sees bytes that fail.
//
// Envelope: "KVMD", u8 envelope version (1), u8 flags (bit 0: a MAC follows), two zero
// bytes, le64 payload length, the payload, SHA-256 of everything before it, and with
// flag 0 set HMAC-SHA256(auth key, "kvbm metadata" + the header + that SHA-256).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm::xfer::detail {

// One registered region, with what each backend publishes for it (backend -> bytes).
struct RegionMetadata {
  MemType type = MemType::Dram;
  Desc desc;
  std::map<std::string, std::string> remote_info;
  bool operator==(const RegionMetadata&) const = default;
};

// An agent's metadata (version 1), or a part of it (partial, version 2: NIXL's partial
// metadata): connection data and/or regions to add to what a peer loaded before, so that
// registering one more region does not resend everything.
struct AgentMetadata {
  static constexpr uint32_t kVersion = 1;
  static constexpr uint32_t kPartialVersion = 2;
  std::string name;
  // backend name -> connection data (UCX: worker address); a partial one may have none
  std::map<std::string, std::string> backends;
  std::vector<RegionMetadata> regions;
  // The agent instance: parts of one incarnation never merge into another's.
  uint64_t incarnation = 0;
  bool partial = false;
  bool operator==(const AgentMetadata&) const = default;
};

// The sealed blob: the payload in its envelope, MACed with `auth_key` when it is not empty.
std::string encode_metadata(const AgentMetadata& metadata, std::string_view auth_key = {});

// Opens the envelope, then decodes the payload. InvalidArgument (naming what is wrong)
// for: more than `max_bytes`, a wrong envelope magic, version, flags or length, a SHA-256
// that does not match (corruption); with `auth_key`: no MAC, or a MAC made with another key;
// then every error of decode_metadata_payload.
Result<AgentMetadata> decode_metadata(std::string_view bytes, size_t max_bytes,
                                      std::string_view auth_key = {});

// The inner parts, for tests and fuzzers that reach past the envelope.
// The payload alone (protobuf), deterministic: equal metadata gives equal bytes.
std::string encode_metadata_payload(const AgentMetadata& metadata);
// Puts any payload in an envelope, as encode_metadata does.
std::string seal_metadata(std::string_view payload, std::string_view auth_key = {});
// The payload inside a sealed blob, once the envelope checks pass (a view into `bytes`).
Result<std::string_view> open_metadata(std::string_view bytes, size_t max_bytes,
                                       std::string_view auth_key = {});
// InvalidArgument for: bytes that do not parse, a version other than kVersion or
// kPartialVersion, a partial one with neither connection data nor regions, an empty
// or over-long name (> 256 bytes), an empty region, a region whose addr + len overflows,
// unknown memory types, a region's remote_info naming a backend the metadata does not list.
Result<AgentMetadata> decode_metadata_payload(std::string_view payload);

}  // namespace kvbm::xfer::detail
