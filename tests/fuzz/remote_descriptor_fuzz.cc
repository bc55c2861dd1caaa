// libFuzzer target for RemoteDescriptor::from_bytes and from_json, the decoders of
// descriptors that arrive from other nodes: any input must decode or fail with
// InvalidArgument and a message, never crash or throw; whatever decodes must survive a
// round trip through bytes exactly, and through JSON exactly where its strings are UTF-8
// (JSON replaces invalid UTF-8).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "kvbm/remote/remote_descriptor.h"

namespace {

using kvbm::ErrorCode;
using kvbm::RemoteDescriptor;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "remote_descriptor_fuzz: %s\n", what.c_str());
  std::abort();
}

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

void check(const kvbm::Result<RemoteDescriptor>& decoded, const char* how) {
  if (!decoded) {
    if (decoded.code() != ErrorCode::InvalidArgument)
      fail(std::string(how) + ": error other than InvalidArgument: " + decoded.error().to_string());
    if (decoded.error().message.empty()) fail(std::string(how) + ": error without a message");
    return;
  }
  const RemoteDescriptor& d = *decoded;
  if (d.agent_name().empty()) fail(std::string(how) + ": decoded an empty agent name");
  if (d.storage().addr() + d.storage().size() < d.storage().addr())
    fail(std::string(how) + ": decoded an overflowing range");

  const std::string bytes = d.to_bytes();
  auto again = RemoteDescriptor::from_bytes(bytes);
  if (!again) fail(std::string(how) + ": bytes do not decode: " + again.error().to_string());
  if (!(*again == d)) fail(std::string(how) + ": bytes round trip changed the descriptor");
  if (again->to_bytes() != bytes) fail(std::string(how) + ": encoding is not deterministic");

  auto from_json = RemoteDescriptor::from_json(d.to_json());
  if (!from_json)
    fail(std::string(how) + ": JSON does not decode: " + from_json.error().to_string());
  const bool exact = valid_utf8(d.agent_name()) && (!d.notif() || valid_utf8(*d.notif()));
  if (exact && !(*from_json == d)) fail(std::string(how) + ": JSON round trip changed it");
  if (!(from_json->storage() == d.storage()))
    fail(std::string(how) + ": JSON round trip changed the region");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check(RemoteDescriptor::from_bytes(input), "from_bytes");
  check(RemoteDescriptor::from_json(input), "from_json");
  return 0;
}
