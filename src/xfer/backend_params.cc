#include "xfer/backend_params.h"

#include <algorithm>
#include <charconv>
#include <string>

namespace kvbm::xfer::detail {

Status check_param_keys(std::string_view backend, const BackendParams& params,
                        std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : params) {
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string list;
    for (std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    return err(ErrorCode::InvalidArgument, backend, " backend has no parameter '", key,
               "' (known: ", list, ")");
  }
  return {};
}

Result<uint64_t> number_param(std::string_view backend, const BackendParams& params,
                              std::string_view key, uint64_t fallback, uint64_t min, uint64_t max) {
  auto it = params.find(std::string(key));
  if (it == params.end()) return fallback;
  const std::string& text = it->second;
  uint64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end) {
    return err(ErrorCode::InvalidArgument, backend, " ", key, " '", text, "' is not a number");
  }
  if (v < min || v > max) {
    return err(ErrorCode::InvalidArgument, backend, " ", key, " ", v, " must be in ", min, "..",
               max);
  }
  return v;
}

}  // namespace kvbm::xfer::detail
