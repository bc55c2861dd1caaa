// An agent's metadata and its wire form: a versioned protobuf message (metadata.proto),
// decoded with size limits and full validation, because the bytes come from the network.
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

struct AgentMetadata {
  static constexpr uint32_t kVersion = 1;
  std::string name;
  // backend name -> connection data (UCX: worker address)
  std::map<std::string, std::string> backends;
  std::vector<RegionMetadata> regions;
  bool operator==(const AgentMetadata&) const = default;
};

std::string encode_metadata(const AgentMetadata& metadata);

// InvalidArgument (naming what is wrong) for: more than `max_bytes`, bytes that do not
// parse, a version other than kVersion, an empty or over-long name (> 256 bytes), an
// empty region, a region whose addr + len overflows, unknown memory types, a region's
// remote_info naming a backend the metadata does not list.
Result<AgentMetadata> decode_metadata(std::string_view bytes, size_t max_bytes);

}  // namespace kvbm::xfer::detail
