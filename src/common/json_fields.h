// Typed fields of an object decoded from untrusted JSON or CBOR (layouts, remote
// descriptors). Every error is InvalidArgument and names the object (`what`) and the key,
// so each decoder reports its fields the same way.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/result.h"

namespace kvbm::detail {

// j[key] as an unsigned integer: "<what> lacks '<key>'" when absent,
// "<what> field '<key>' is not an unsigned integer" when of another type.
Result<uint64_t> json_uint(const nlohmann::json& j, std::string_view what, const char* key);

// j[key] as a string: "<what> lacks '<key>'", "<what> field '<key>' is not a string".
Result<std::string> json_string(const nlohmann::json& j, std::string_view what, const char* key);

// "<what> of N bytes exceeds <max>" when the encoded form is longer than `max` bytes: a
// decoder checks before it parses anything.
Status check_encoded_size(std::string_view encoded, std::string_view what, size_t max);

}  // namespace kvbm::detail
