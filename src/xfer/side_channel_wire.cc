// The side channel's request framing and the checks of authenticated requests.
#include "xfer/side_channel_wire.h"

#include <cstring>

namespace kvbm::xfer::detail {

void put_le32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_le64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t get_le32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

uint64_t get_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

std::string printable(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f) {
      out += ch;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

uint64_t wall_clock_ns() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
}

Result<size_t> request_size(std::string_view prefix) {
  if (prefix.size() < kRequestHeaderBytes) return kRequestHeaderBytes;
  const bool plain = std::memcmp(prefix.data(), kPlainRequestMagic, 8) == 0;
  if (!plain && std::memcmp(prefix.data(), kAuthRequestMagic, 8) != 0) {
    return err(ErrorCode::InvalidArgument, "wrong request magic '", printable(prefix.substr(0, 8)),
               "' (expected 'KVBMRQ01' or 'KVBMRQ02')");
  }
  const uint32_t len = get_le32(prefix.data() + 8);
  if (len > kMaxKeyBytes) {
    return err(ErrorCode::InvalidArgument, "request key of ", len, " bytes exceeds ", kMaxKeyBytes);
  }
  return kRequestHeaderBytes + len + (plain ? 0 : kRequestAuthBytes);
}

Result<SideChannelRequest> decode_request(std::string_view bytes) {
  auto size = request_size(bytes);
  if (!size) return size.error();
  if (bytes.size() != *size) {
    return err(ErrorCode::InvalidArgument, "request of ", bytes.size(), " bytes; its header says ",
               *size);
  }
  SideChannelRequest r;
  const size_t key_len = get_le32(bytes.data() + 8);
  r.key.assign(bytes.substr(kRequestHeaderBytes, key_len));
  r.authenticated = std::memcmp(bytes.data(), kAuthRequestMagic, 8) == 0;
  if (!r.authenticated) return r;
  const char* p = bytes.data() + kRequestHeaderBytes + key_len;
  r.timestamp_ns = get_le64(p);
  std::memcpy(r.nonce.data(), p + 8, kNonceBytes);
  std::memcpy(r.mac.data(), p + 8 + kNonceBytes, r.mac.size());
  r.signed_bytes = bytes.substr(0, bytes.size() - r.mac.size());
  return r;
}

std::string encode_request(std::string_view key, std::string_view auth_key, uint64_t now_ns,
                           const Nonce& nonce) {
  const bool auth = !auth_key.empty();
  std::string out(kRequestHeaderBytes + key.size() + (auth ? kRequestAuthBytes : 0), '\0');
  std::memcpy(out.data(), auth ? kAuthRequestMagic : kPlainRequestMagic, 8);
  put_le32(out.data() + 8, static_cast<uint32_t>(key.size()));
  std::memcpy(out.data() + kRequestHeaderBytes, key.data(), key.size());
  if (!auth) return out;
  char* p = out.data() + kRequestHeaderBytes + key.size();
  put_le64(p, now_ns);
  std::memcpy(p + 8, nonce.data(), kNonceBytes);
  const size_t signed_len = out.size() - sizeof(Digest);
  const Digest mac = hmac_sha256(auth_key, {std::string_view(out).substr(0, signed_len)});
  std::memcpy(out.data() + signed_len, mac.data(), mac.size());
  return out;
}

Digest reply_mac(std::string_view auth_key, const Nonce& nonce, uint64_t length,
                 const Digest& payload_sha256) {
  char len[8];
  put_le64(len, length);
  return hmac_sha256(auth_key,
                     {std::string_view(kAuthReplyMagic, 8),
                      std::string_view(reinterpret_cast<const char*>(nonce.data()), nonce.size()),
                      std::string_view(len, 8), as_view(payload_sha256)});
}

Status RequestAuthenticator::admit(const SideChannelRequest& request, uint64_t now_ns) {
  if (!request.authenticated) {
    return err(ErrorCode::InvalidArgument,
               "authentication required: this agent serves only requests authenticated with "
               "its key (AgentConfig::auth_key, KVBM_AUTH_KEY or KVBM_AUTH_KEY_FILE)");
  }
  const Digest expected = hmac_sha256(key_, {request.signed_bytes});
  if (!digests_equal(expected.data(), request.mac.data())) {
    return err(ErrorCode::InvalidArgument,
               "authentication failed: the request's MAC does not match this agent's key");
  }
  // Forget what has aged out: a request that old is refused by its timestamp anyway.
  while (!by_time_.empty() && by_time_.begin()->first + window_ns_ < now_ns) {
    seen_.erase(by_time_.begin()->second);
    by_time_.erase(by_time_.begin());
  }
  const uint64_t ts = request.timestamp_ns;
  if (ts + window_ns_ < now_ns || ts > now_ns + window_ns_) {
    const double off_s = (static_cast<double>(ts) - static_cast<double>(now_ns)) / 1e9;
    return err(ErrorCode::InvalidArgument, "request timestamp is ", off_s,
               " s off this agent's clock (the window is +-", window_ns_ / 1'000'000'000,
               " s): stale, replayed, or a clock out of sync");
  }
  if (seen_.count(request.nonce) != 0) {
    return err(ErrorCode::InvalidArgument, "replayed request refused (its nonce was seen before)");
  }
  if (seen_.size() >= kMaxNonces) {
    return err(ErrorCode::InvalidArgument, "busy: ", seen_.size(),
               " authenticated requests within the window; retry later");
  }
  seen_.emplace(request.nonce, ts);
  by_time_.emplace(ts, request.nonce);
  return {};
}

}  // namespace kvbm::xfer::detail
