// SHA-256, HMAC-SHA256 and randomness through libcrypto's one-shot calls (not the
// deprecated context APIs), and the agent key's lookup.
#include "xfer/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kvbm::xfer::detail {

Digest sha256(std::string_view bytes) {
  Digest d{};
  unsigned int len = 0;
  // Cannot fail for SHA-256 short of memory exhaustion inside libcrypto; the digest is
  // then all zeros, which no check accepts against a real one.
  EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

Digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts) {
  std::string message;
  size_t total = 0;
  for (auto p : parts) total += p.size();
  message.reserve(total);
  for (auto p : parts) message.append(p);
  Digest d{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), d.data(), &len);
  return d;
}

bool digests_equal(const uint8_t* a, const uint8_t* b) {
  return CRYPTO_memcmp(a, b, sizeof(Digest)) == 0;
}

Status random_bytes(uint8_t* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    return err(ErrorCode::Internal, "no randomness for a ", n, "-byte nonce (RAND_bytes failed)");
  }
  return {};
}

namespace {

Result<std::string> checked_key(std::string key, const std::string& source) {
  if (key.size() < kMinAuthKeyBytes) {
    return err(ErrorCode::InvalidArgument, "auth key from ", source, " is ", key.size(),
               " bytes; at least ", kMinAuthKeyBytes, " are required");
  }
  return key;
}

}  // namespace

Result<std::string> resolve_auth_key(const std::string& configured) {
  if (!configured.empty()) return checked_key(configured, "AgentConfig::auth_key");
  if (const char* env = std::getenv("KVBM_AUTH_KEY"); env != nullptr && *env != '\0') {
    return checked_key(env, "KVBM_AUTH_KEY");
  }
  const char* path = std::getenv("KVBM_AUTH_KEY_FILE");
  if (path == nullptr || *path == '\0') return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return err(ErrorCode::Io, "KVBM_AUTH_KEY_FILE '", path, "': ", std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string key = text.str();
  if (!key.empty() && key.back() == '\n') key.pop_back();
  return checked_key(std::move(key), std::string("KVBM_AUTH_KEY_FILE '") + path + "'");
}

}  // namespace kvbm::xfer::detail
