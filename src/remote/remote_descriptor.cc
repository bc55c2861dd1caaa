// Wire form: one CBOR (or JSON) object
//   {"v": 1, "agent": str, "addr": uint, "size": uint, "mem": "DRAM"|"VRAM"|"FILE"|"UNKNOWN",
//    "dev": uint, "notif": str (optional)}
// decoded with nlohmann-json without exceptions, every field checked.
#include "kvbm/remote/remote_descriptor.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "common/nesting.h"

namespace kvbm {
namespace {

using json = nlohmann::json;
constexpr size_t kMaxEncodedBytes = 1 << 20;
// Our object nests one level; room for later additions, and far from the stack's limit
// (common/nesting.h says why the decoders need a limit).
constexpr size_t kMaxDepth = 32;

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
  if (detail::cbor_nests_deeper_than(bytes, kMaxDepth)) {
    return err(ErrorCode::InvalidArgument, "remote descriptor nests deeper than ", kMaxDepth,
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
