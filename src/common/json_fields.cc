#include "common/json_fields.h"

#include <nlohmann/json.hpp>

namespace kvbm::detail {

Result<uint64_t> json_uint(const nlohmann::json& j, std::string_view what, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return err(ErrorCode::InvalidArgument, what, " lacks '", key, "'");
  if (!it->is_number_unsigned()) {
    return err(ErrorCode::InvalidArgument, what, " field '", key, "' is not an unsigned integer");
  }
  return it->get<uint64_t>();
}

Result<std::string> json_string(const nlohmann::json& j, std::string_view what, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return err(ErrorCode::InvalidArgument, what, " lacks '", key, "'");
  if (!it->is_string()) {
    return err(ErrorCode::InvalidArgument, what, " field '", key, "' is not a string");
  }
  return it->get<std::string>();
}

Status check_encoded_size(std::string_view encoded, std::string_view what, size_t max) {
  if (encoded.size() > max) {
    return err(ErrorCode::InvalidArgument, what, " of ", encoded.size(), " bytes exceeds ", max);
  }
  return {};
}

}  // namespace kvbm::detail
