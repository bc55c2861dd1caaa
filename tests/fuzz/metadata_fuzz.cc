// libFuzzer target for decode_metadata, the decoder of untrusted agent metadata: any
// input must decode or fail with InvalidArgument, never crash; whatever decodes must
// re-encode to bytes that decode to the same metadata, and encode the same way again.
// The first byte picks where the rest goes: odd, as a whole blob (the envelope's checks);
// even, as a payload that seal_metadata puts in a valid envelope, so that mutations reach
// the payload decoder behind the checksum. Bit 1 set: sealed and decoded with a key (the
// HMAC path).
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "xfer/metadata.h"

namespace {

using kvbm::ErrorCode;
using kvbm::xfer::detail::decode_metadata;
using kvbm::xfer::detail::encode_metadata;
using kvbm::xfer::detail::seal_metadata;

constexpr size_t kMaxBytes = size_t{1} << 20;
constexpr std::string_view kKey = "metadata_fuzz key";

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "metadata_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // protobuf logs every invalid UTF-8 string it rejects; that would drown the fuzzer's output.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string_view key = (data[0] & 2) != 0 ? kKey : std::string_view();
  const std::string sealed = (data[0] & 1) != 0 ? std::string(rest) : seal_metadata(rest, key);
  auto decoded = decode_metadata(sealed, kMaxBytes, key);
  if (!decoded) {
    if (decoded.code() != ErrorCode::InvalidArgument) fail("error other than InvalidArgument");
    if (decoded.error().message.empty()) fail("error without a message");
    return 0;
  }
  const std::string encoded = encode_metadata(*decoded, key);
  auto again = decode_metadata(encoded, std::numeric_limits<size_t>::max(), key);
  if (!again) fail(("re-encoded metadata does not decode: " + again.error().to_string()).c_str());
  if (!(*again == *decoded)) fail("round trip changed the metadata");
  if (encode_metadata(*again, key) != encoded) fail("encoding is not deterministic");
  return 0;
}
