// libFuzzer target for the side channel's request decoder (side_channel_wire.h), the first
// bytes a stranger sends an agent's listener, and the checks of authenticated requests.
// Any input must size, decode and be admitted or refused with InvalidArgument and a
// message, never crash; the size a prefix declares must never change as more bytes come;
// whatever decodes must re-encode to the same bytes. The first byte picks the mode: even,
// the rest is a raw request; odd, the rest names a key that is sent as a properly signed
// request, which must be admitted once and then refused as a replay.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "xfer/side_channel_wire.h"

namespace {

using namespace kvbm::xfer::detail;
using kvbm::ErrorCode;

constexpr std::string_view kKey = "side channel fuzz key";
constexpr uint64_t kNow = 1'800'000'000'000'000'000;  // a fixed clock: runs are repeatable

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "side_channel_request_fuzz: %s\n", what.c_str());
  std::abort();
}

template <typename T>
void check_error(const kvbm::Result<T>& r, const char* how) {
  if (r.code() != ErrorCode::InvalidArgument)
    fail(std::string(how) + ": error other than InvalidArgument: " + r.error().to_string());
  if (r.error().message.empty()) fail(std::string(how) + ": error without a message");
}

// What the server does as the bytes trickle in: the declared size, prefix by prefix.
void sizes(std::string_view in) {
  size_t declared = 0;
  for (size_t n = 0; n <= in.size() && n <= kMaxRequestBytes; ++n) {
    auto size = request_size(in.substr(0, n));
    if (!size) return check_error(size, "request_size");
    if (*size < kRequestHeaderBytes || *size > kMaxRequestBytes) fail("size out of range");
    if (n >= kRequestHeaderBytes && declared != 0 && *size != declared)
      fail("declared size changed as bytes arrived");
    if (n >= kRequestHeaderBytes) declared = *size;
  }
}

void raw(std::string_view in) {
  sizes(in);
  auto r = decode_request(in);
  if (!r) return check_error(r, "decode_request");
  if (r->key.size() > kMaxKeyBytes) fail("decoded an over-long key");
  std::string again = encode_request(r->key, {}, 0, Nonce{});
  if (r->authenticated) {
    // Re-encode the fields as they were; the MAC is carried, not recomputed.
    std::memcpy(again.data(), kAuthRequestMagic, 8);
    char ts[8];
    put_le64(ts, r->timestamp_ns);
    again.append(ts, 8);
    again.append(reinterpret_cast<const char*>(r->nonce.data()), r->nonce.size());
    again.append(reinterpret_cast<const char*>(r->mac.data()), r->mac.size());
    if (r->signed_bytes != in.substr(0, in.size() - r->mac.size()))
      fail("signed bytes are not the request less its MAC");
  }
  if (again != in) fail("re-encoding changed the request");
  RequestAuthenticator auth(std::string(kKey), std::chrono::seconds(30));
  auto admitted = auth.admit(*r, kNow);
  if (!admitted) check_error(admitted, "admit");
}

void signed_request(std::string_view in) {
  const std::string_view key = in.substr(0, kMaxKeyBytes);
  Nonce nonce{};
  std::memcpy(nonce.data(), in.data(), std::min(in.size(), nonce.size()));
  const std::string bytes = encode_request(key, kKey, kNow, nonce);
  auto size = request_size(bytes);
  if (!size || *size != bytes.size()) fail("a signed request's declared size is wrong");
  auto r = decode_request(bytes);
  if (!r) fail("a signed request does not decode: " + r.error().to_string());
  if (!r->authenticated || r->key != key || r->nonce != nonce || r->timestamp_ns != kNow)
    fail("a signed request decoded to other fields");
  RequestAuthenticator auth(std::string(kKey), std::chrono::seconds(30));
  if (auto ok = auth.admit(*r, kNow); !ok)
    fail("a signed request was refused: " + ok.error().to_string());
  auto replay = auth.admit(*r, kNow);
  if (replay || replay.error().message.find("replayed") == std::string::npos)
    fail("a replayed request was not refused as one");
  RequestAuthenticator other(std::string("another key, 16+ bytes"), std::chrono::seconds(30));
  if (other.admit(*r, kNow)) fail("a request signed with another key was admitted");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    raw(rest);
  } else {
    signed_request(rest);
  }
  return 0;
}
