// The side channel's framing (side_channel.h describes the exchange) as pure functions
// over bytes, apart from sockets, so that the request decoder can be fuzzed on its own;
// and the checks of an authenticated request: its MAC, its timestamp, its nonce.
//
// Request, plain:         "KVBMRQ01", le32 key length (<= kMaxKeyBytes), the key.
// Request, authenticated: "KVBMRQ02", le32 key length, the key, le64 timestamp (the
//   client's wall clock, ns since the Unix epoch), a 16-byte random nonce, and
//   HMAC-SHA256(auth key, every byte before it).
// Reply, plain:           "KVBMMD01", le64 length, the payload.
// Reply, authenticated:   "KVBMMD02", le64 length, reply_mac(...) (32 bytes), the payload.
// Error:                  "KVBMER01", le64 length (<= 4096), the error's text.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "kvbm/result.h"
#include "xfer/auth.h"

namespace kvbm::xfer::detail {

// The longest key a request may name.
constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kRequestHeaderBytes = 12;  // magic + le32 key length
constexpr size_t kNonceBytes = 16;
constexpr size_t kRequestAuthBytes = 8 + kNonceBytes + sizeof(Digest);  // time, nonce, MAC
constexpr size_t kMaxRequestBytes = kRequestHeaderBytes + kMaxKeyBytes + kRequestAuthBytes;
constexpr size_t kReplyHeaderBytes = 16;                                      // magic + le64 length
constexpr size_t kAuthReplyHeaderBytes = kReplyHeaderBytes + sizeof(Digest);  // + MAC
constexpr size_t kMaxErrorBytes = 4096;

inline constexpr char kPlainRequestMagic[8] = {'K', 'V', 'B', 'M', 'R', 'Q', '0', '1'};
inline constexpr char kAuthRequestMagic[8] = {'K', 'V', 'B', 'M', 'R', 'Q', '0', '2'};
inline constexpr char kPlainReplyMagic[8] = {'K', 'V', 'B', 'M', 'M', 'D', '0', '1'};
inline constexpr char kAuthReplyMagic[8] = {'K', 'V', 'B', 'M', 'M', 'D', '0', '2'};
inline constexpr char kErrorMagic[8] = {'K', 'V', 'B', 'M', 'E', 'R', '0', '1'};

using Nonce = std::array<uint8_t, kNonceBytes>;

struct SideChannelRequest {
  std::string key;             // empty: the metadata
  bool authenticated = false;  // KVBMRQ02: the fields below are set
  uint64_t timestamp_ns = 0;
  Nonce nonce{};
  Digest mac{};
  std::string_view signed_bytes;  // what `mac` covers (a view into the decoded bytes)
};

// The whole request's length, judged from its first bytes: kRequestHeaderBytes until that
// many have arrived, then the exact total. InvalidArgument (its text goes back to the
// client) for a wrong magic or a key over kMaxKeyBytes.
Result<size_t> request_size(std::string_view prefix);
// Decodes exactly one whole request. InvalidArgument as request_size, or for a length
// other than the one its header declares.
Result<SideChannelRequest> decode_request(std::string_view bytes);
// A plain request when `auth_key` is empty; else an authenticated one stamped `now_ns`
// with `nonce`.
std::string encode_request(std::string_view key, std::string_view auth_key, uint64_t now_ns,
                           const Nonce& nonce);

// The MAC of an authenticated reply: binds the payload (by its SHA-256) to the request's
// nonce, so a recorded reply cannot answer another request.
Digest reply_mac(std::string_view auth_key, const Nonce& nonce, uint64_t length,
                 const Digest& payload_sha256);

uint64_t wall_clock_ns();
void put_le32(char* p, uint32_t v);
void put_le64(char* p, uint64_t v);
uint32_t get_le32(const char* p);
uint64_t get_le64(const char* p);
// Bytes from a peer, fit for an error message (non-printable bytes as \xNN).
std::string printable(std::string_view s);

// Admits authenticated requests: a MAC made with the key, a timestamp within `window` of
// this clock (either way), and a nonce not seen within the window (a replay). Remembers
// at most kMaxNonces nonces; past that it refuses requests until old ones age out, so a
// flood of valid requests (only a key holder can make them) cannot make it forget one
// that could then be replayed. Not thread-safe: one per server thread.
class RequestAuthenticator {
 public:
  static constexpr size_t kMaxNonces = size_t{1} << 16;
  RequestAuthenticator(std::string key, std::chrono::seconds window)
      : key_(std::move(key)), window_ns_(static_cast<uint64_t>(window.count()) * 1'000'000'000) {}

  // InvalidArgument naming the reason (its text goes back to the client).
  Status admit(const SideChannelRequest& request, uint64_t now_ns);
  const std::string& key() const { return key_; }

 private:
  std::string key_;
  uint64_t window_ns_;
  std::multimap<uint64_t, Nonce> by_time_;  // to forget nonces once they age out
  std::map<Nonce, uint64_t> seen_;
};

}  // namespace kvbm::xfer::detail
