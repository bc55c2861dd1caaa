// Wire form: one CBOR (or JSON) object
//   {"v": 1, "agent": str, "addr": uint, "size": uint, "mem": "DRAM"|"VRAM"|"FILE"|"UNKNOWN",
//    "dev": uint, "notif": str (optional)}
// decoded with nlohmann-json without exceptions, every field checked. Decoding goes through
// a SAX handler that keeps only the top-level scalars: nested values (of fields this build
// does not know) are walked, counted and dropped, never built, so hostile input (deep
// nesting, huge arrays of small values) costs time linear in its size and little memory.
#include "kvbm/remote/remote_descriptor.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "common/json_fields.h"
#include "common/nesting.h"

namespace kvbm {
namespace {

using json = nlohmann::json;
constexpr size_t kMaxDescriptorBytes = 1 << 20;
// Our object nests one level; room for later additions, and far from the stack's limit
// (common/nesting.h says why the decoders need a limit).
constexpr size_t kMaxDescriptorDepth = 32;
constexpr size_t kMaxCborDepth = kMaxDescriptorDepth;
constexpr size_t kMaxJsonDepth = kMaxDescriptorDepth;
// Values of any kind, at any depth: ours has 7; room for later additions.
constexpr size_t kMaxValues = 4096;

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

Result<RemoteDescriptor> from_object(const json& j) {
  if (j.is_discarded()) return err(ErrorCode::InvalidArgument, "remote descriptor does not parse");
  if (!j.is_object()) return err(ErrorCode::InvalidArgument, "remote descriptor is not an object");
  auto v = detail::json_uint(j, "remote descriptor", "v");
  if (!v) return v.error();
  if (*v != RemoteDescriptor::kVersion) {
    return err(ErrorCode::InvalidArgument, "remote descriptor version ", *v, " (this build reads ",
               RemoteDescriptor::kVersion, ")");
  }
  auto addr = detail::json_uint(j, "remote descriptor", "addr");
  auto size = detail::json_uint(j, "remote descriptor", "size");
  auto dev = detail::json_uint(j, "remote descriptor", "dev");
  for (auto* r : {&addr, &size, &dev}) {
    if (!*r) return r->error();
  }
  if (*addr + *size < *addr) {
    return err(ErrorCode::InvalidArgument, "remote descriptor addr ", *addr, " + size ", *size,
               " overflows");
  }
  auto agent = detail::json_string(j, "remote descriptor", "agent");
  if (!agent) return agent.error();
  if (agent->empty()) return err(ErrorCode::InvalidArgument, "remote descriptor 'agent' is empty");
  auto mem = detail::json_string(j, "remote descriptor", "mem");
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

// Builds the top-level object of scalars and nothing else. A field whose value is an array
// or object keeps an empty one (so that its type error names it); what is inside is
// skipped. Stops at the first limit passed, leaving the reason in `error`.
class FlatObjectSax : public nlohmann::json_sax<json> {
 public:
  explicit FlatObjectSax(size_t max_depth) : max_depth_(max_depth) {}
  json result = json::object();
  std::string error;

  bool null() override { return scalar(nullptr); }
  bool boolean(bool v) override { return scalar(v); }
  bool number_integer(number_integer_t v) override { return scalar(v); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(v); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(v); }
  bool string(string_t& v) override { return scalar(std::move(v)); }
  bool binary(binary_t& v) override { return scalar(json::binary_t(std::move(v))); }
  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    if (depth_ == 1) key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t pos, const std::string&,
                   const nlohmann::detail::exception& e) override {
    error = "does not parse: " + std::string(e.what()) + " (at byte " + std::to_string(pos) + ")";
    return false;
  }

 private:
  bool counted() {
    if (++values_ <= kMaxValues) return true;
    error = "holds over " + std::to_string(kMaxValues) + " values";
    return false;
  }
  bool scalar(json v) {
    if (!counted()) return false;
    if (depth_ == 0) return not_an_object();
    if (depth_ == 1) result[key_] = std::move(v);
    return true;
  }
  bool open(json empty) {
    if (!counted()) return false;
    if (depth_ == 0 && !empty.is_object()) return not_an_object();
    if (depth_ == 1) result[key_] = std::move(empty);
    if (++depth_ > max_depth_) {
      error = "nests deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }
  bool not_an_object() {
    error = "is not an object";
    return false;
  }

  size_t max_depth_;
  size_t depth_ = 0;
  size_t values_ = 0;
  std::string key_;
};

// Decodes `in` (JSON or CBOR) through FlatObjectSax, then checks the fields.
template <typename Input>
Result<RemoteDescriptor> decode_flat(const Input& in, json::input_format_t format) {
  FlatObjectSax sax(format == json::input_format_t::json ? kMaxJsonDepth : kMaxCborDepth);
  if (!json::sax_parse(in.begin(), in.end(), &sax, format, /*strict=*/true)) {
    if (sax.error.empty()) sax.error = "does not parse";
    return err(ErrorCode::InvalidArgument, "remote descriptor ", sax.error);
  }
  return from_object(sax.result);
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
  KVBM_TRY(detail::check_encoded_size(bytes, "remote descriptor", kMaxDescriptorBytes));
  if (detail::cbor_nests_deeper_than(bytes, kMaxDescriptorDepth)) {
    return err(ErrorCode::InvalidArgument, "remote descriptor nests deeper than ",
               kMaxDescriptorDepth, " levels");
  }
  // Even without exceptions enabled, nlohmann throws for some hostile input (a huge
  // declared array size); nothing may escape.
  try {
    return decode_flat(bytes, json::input_format_t::cbor);
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "remote descriptor does not parse: ", e.what());
  }
}

Result<RemoteDescriptor> RemoteDescriptor::from_json(std::string_view text) {
  KVBM_TRY(detail::check_encoded_size(text, "remote descriptor", kMaxDescriptorBytes));
  try {
    return decode_flat(text, json::input_format_t::json);
  } catch (const std::exception& e) {
    return err(ErrorCode::InvalidArgument, "remote descriptor does not parse: ", e.what());
  }
}

}  // namespace kvbm
