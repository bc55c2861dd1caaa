// libFuzzer target for Layout::from_bytes and from_json, the decoders of the layouts peers
// send: any input must decode or fail with InvalidArgument and a message, never crash,
// throw or recurse off the stack; whatever decodes must address every chunk inside its
// regions and survive a round trip through bytes and JSON with the same shape and regions.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "kvbm/layout.h"

namespace {

using kvbm::ErrorCode;
using kvbm::Layout;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "layout_fuzz: %s\n", what.c_str());
  std::abort();
}

void same(const Layout& a, const Layout& b, const std::string& how) {
  if (!a.same_shape(b) || a.order() != b.order()) fail(how + " changed the shape");
  if (a.remote_agent() != b.remote_agent()) fail(how + " changed the agent");
  for (size_t i = 0; i < a.num_regions(); ++i) {
    if (!(a.remote_regions()[i].storage() == b.remote_regions()[i].storage()))
      fail(how + " changed region " + std::to_string(i));
  }
}

void check(const kvbm::Result<Layout>& decoded, const char* how) {
  if (!decoded) {
    if (decoded.code() != ErrorCode::InvalidArgument)
      fail(std::string(how) + ": error other than InvalidArgument: " + decoded.error().to_string());
    if (decoded.error().message.empty()) fail(std::string(how) + ": error without a message");
    return;
  }
  const Layout& l = *decoded;
  if (!l.is_remote() || l.num_regions() == 0) fail(std::string(how) + ": not a remote layout");
  // The last chunk of the last block lies inside its region (the decoder checked sizes).
  const auto& c = l.config();
  for (size_t layer : {size_t{0}, c.num_layers - 1}) {
    auto m = l.memory_region(c.num_blocks - 1, layer, c.outer_dim - 1);
    if (!m) fail(std::string(how) + ": last chunk has no address: " + m.error().to_string());
    if (m->offset + m->size > l.region(m->region).size())
      fail(std::string(how) + ": last chunk ends past its region");
  }
  auto bytes = l.to_bytes();
  if (!bytes) fail(std::string(how) + ": does not encode: " + bytes.error().to_string());
  auto again = Layout::from_bytes(*bytes);
  if (!again) fail(std::string(how) + ": bytes do not decode: " + again.error().to_string());
  same(l, *again, std::string(how) + ": bytes round trip");
  auto text = l.to_json();
  if (!text) fail(std::string(how) + ": no JSON: " + text.error().to_string());
  auto from_text = Layout::from_json(*text);
  if (!from_text)
    fail(std::string(how) + ": JSON does not decode: " + from_text.error().to_string());
  if (!from_text->same_shape(l)) fail(std::string(how) + ": JSON round trip changed the shape");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check(Layout::from_bytes(input), "from_bytes");
  check(Layout::from_json(input), "from_json");
  return 0;
}
