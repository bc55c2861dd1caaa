// Wire form: one CBOR (or JSON) object
//   {"v": 1, "agent": str, "addr": uint, "size": uint, "mem": "DRAM"|"VRAM"|"FILE"|"UNKNOWN",
//    "dev": uint, "notif": str (optional)}
// decoded with nlohmann-json without exceptions, every field checked.
#include "kvbm/remote/remote_descriptor.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <vector>

namespace kvbm {
namespace {

using json = nlohmann::json;
constexpr size_t kMaxEncodedBytes = 1 << 20;
// Our object nests one level; room for later additions, and far from the stack's limit.
constexpr size_t kMaxCborDepth = 32;

// nlohmann's CBOR reader recurses once per nested array, map or tag, so a megabyte of
// 0x81 bytes would overflow the stack. This walks the item heads without recursion and
// reports whether containers nest deeper than `max_depth`. Input it cannot follow is
// malformed, and left to the decoder to reject (it fails there, no deeper than here).
bool cbor_nests_deeper_than(std::string_view in, size_t max_depth) {
  constexpr uint64_t kIndefinite = UINT64_MAX;
  std::vector<uint64_t> left = {1};  // items left in each open container; the top is one item
  size_t pos = 0;
  while (pos < in.size() && !left.empty()) {
    if (left.back() == 0) {
      left.pop_back();
      continue;
    }
    const auto head = static_cast<uint8_t>(in[pos++]);
    if (head == 0xff) {  // "break": ends an indefinite-length container
      if (left.back() != kIndefinite) return false;
      left.pop_back();
      continue;
    }
    if (left.back() != kIndefinite) --left.back();
    const uint8_t major = head >> 5;
    const uint8_t info = head & 31;
    uint64_t arg = info;
    const bool indefinite = info == 31;
    if (info >= 24 && info <= 27) {
      const size_t n = size_t{1} << (info - 24);
      if (n > in.size() - pos) return false;
      arg = 0;
      for (size_t i = 0; i < n; ++i) arg = (arg << 8) | static_cast<uint8_t>(in[pos++]);
    } else if (info >= 28 && !indefinite) {
      return false;
    }
    const uint64_t remaining = in.size() - pos;  // every item takes at least one byte
    switch (major) {
      case 2:
      case 3:
        if (indefinite) {
          left.push_back(kIndefinite);
        } else {
          if (arg > remaining) return false;
          pos += arg;
        }
        break;
      case 4:
      case 5:
        if (indefinite) {
          left.push_back(kIndefinite);
        } else {
          left.push_back(std::min(arg, remaining) * (major == 5 ? 2 : 1));
        }
        break;
      case 6:
        left.push_back(1);
        break;
      default:
        break;
    }
    if (left.size() - 1 > max_depth) return true;
  }
  return false;
}

json to_object(const RemoteDescriptor& d) {
  json j = {{"v", RemoteDescriptor::kVersion},
            {"agent", d.agent_name()},
            {"addr", d.storage().addr()},
            {"size", d.storage().size()},
            {"mem", xfer::to_string(d.storage().mem_type())},
            {"dev", d.storage().device_id()}};
  if (d.notif())
    j["notif"] = json::binary_t(std::vector<uint8_t>(d.notif()->begin(), d.notif()->end()));
  return j;
}

Result<uint64_t> get_uint(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return err(ErrorCode::InvalidArgument, "remote descriptor lacks '", key, "'");
  if (!it->is_number_unsigned()) {
    return err(ErrorCode::InvalidArgument, "remote descriptor field '", key,
               "' is not an unsigned integer");
  }
  return it->get<uint64_t>();
}

Result<std::string> get_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return err(ErrorCode::InvalidArgument, "remote descriptor lacks '", key, "'");
  if (!it->is_string()) {
    return err(ErrorCode::InvalidArgument, "remote descriptor field '", key, "' is not a string");
  }
  return it->get<std::string>();
}

Result<RemoteDescriptor> from_object(const json& j) {
  if (j.is_discarded()) return err(ErrorCode::InvalidArgument, "remote descriptor does not parse");
  if (!j.is_object()) return err(ErrorCode::InvalidArgument, "remote descriptor is not an object");
  auto v = get_uint(j, "v");
  if (!v) return v.error();
  if (*v != RemoteDescriptor::kVersion) {
    return err(ErrorCode::InvalidArgument, "remote descriptor version ", *v, " (this build reads ",
               RemoteDescriptor::kVersion, ")");
  }
  auto addr = get_uint(j, "addr");
  auto size = get_uint(j, "size");
  auto dev = get_uint(j, "dev");
  for (auto* r : {&addr, &size, &dev}) {
    if (!*r) return r->error();
  }
  if (*addr + *size < *addr) {
    return err(ErrorCode::InvalidArgument, "remote descriptor addr ", *addr, " + size ", *size,
               " overflows");
  }
  auto agent = get_string(j, "agent");
  if (!agent) return agent.error();
  if (agent->empty()) return err(ErrorCode::InvalidArgument, "remote descriptor 'agent' is empty");
  auto mem = get_string(j, "mem");
  if (!mem) return mem.error();
  std::optional<xfer::MemType> type;
  for (auto t :
       {xfer::MemType::Dram, xfer::MemType::Vram, xfer::MemType::File, xfer::MemType::Unknown}) {
    if (*mem == xfer::to_string(t)) type = t;
  }
  if (!type) {
    return err(ErrorCode::InvalidArgument, "remote descriptor has unknown memory type '", *mem,
               "'");
  }
  RemoteDescriptor d(RemoteStorage(*addr, *size, *type, *dev), std::move(*agent));
  if (auto n = j.find("notif"); n != j.end()) {
    if (n->is_binary()) {
      const auto& b = n->get_binary();
      d.set_notif(std::string(b.begin(), b.end()));
    } else if (n->is_string()) {
      d.set_notif(n->get<std::string>());
    } else {
      return err(ErrorCode::InvalidArgument,
                 "remote descriptor 'notif' is neither bytes nor a string");
    }
  }
  return d;
}

Status check_size(std::string_view bytes) {
  if (bytes.size() > kMaxEncodedBytes) {
    return err(ErrorCode::InvalidArgument, "remote descriptor of ", bytes.size(), " bytes exceeds ",
               kMaxEncodedBytes);
  }
  return {};
}

}  // namespace

std::string RemoteDescriptor::to_bytes() const {
  std::vector<uint8_t> cbor = json::to_cbor(to_object(*this));
  return std::string(cbor.begin(), cbor.end());
}

std::string RemoteDescriptor::to_json() const {
  json j = to_object(*this);
  // JSON has no bytes: a text notification stays text.
  if (notif_) j["notif"] = *notif_;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<RemoteDescriptor> RemoteDescriptor::from_bytes(std::string_view bytes) {
  KVBM_TRY(check_size(bytes));
  if (cbor_nests_deeper_than(bytes, kMaxCborDepth)) {
    return err(ErrorCode::InvalidArgument, "remote descriptor nests deeper than ", kMaxCborDepth,
               " levels");
  }
  // Even without exceptions enabled, nlohmann throws for some hostile input (a huge
  // declared array size); nothing may escape.
  try {
    return from_object(json::from_cbor(bytes.begin(), bytes.end(), true, false));
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "remote descriptor does not parse: ", e.what());
  }
}

Result<RemoteDescriptor> RemoteDescriptor::from_json(std::string_view text) {
  KVBM_TRY(check_size(text));
  try {
    return from_object(json::parse(text.begin(), text.end(), nullptr, false));
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "remote descriptor does not parse: ", e.what());
  }
}

}  // namespace kvbm
