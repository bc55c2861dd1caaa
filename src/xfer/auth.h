// The cryptography of the shared-key authentication (README "Authentication"): SHA-256,
// HMAC-SHA256 and random nonces from OpenSSL's libcrypto, and where an agent's key comes
// from. Thread safety: every function may be called from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

using Digest = std::array<uint8_t, 32>;

// The shortest key an agent accepts: a shorter secret is too easy to guess offline from
// one captured MAC.
constexpr size_t kMinAuthKeyBytes = 16;

Digest sha256(std::string_view bytes);
// HMAC-SHA256 under `key` over the concatenation of `parts` (small: they are copied).
Digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts);
// Compares in time independent of where they differ, so a MAC cannot be guessed byte by byte.
bool digests_equal(const uint8_t* a, const uint8_t* b);
// Unpredictable bytes (nonces). Internal if the system has no randomness to give.
Status random_bytes(uint8_t* out, size_t n);

// The key an agent uses: `configured` if not empty, else $KVBM_AUTH_KEY, else the contents
// of the file named by $KVBM_AUTH_KEY_FILE (one trailing newline dropped), else none
// (empty: authentication off). InvalidArgument for a key under kMinAuthKeyBytes; Io for a
// key file that cannot be read.
Result<std::string> resolve_auth_key(const std::string& configured);

inline std::string_view as_view(const Digest& d) {
  return {reinterpret_cast<const char*>(d.data()), d.size()};
}

}  // namespace kvbm::xfer::detail
