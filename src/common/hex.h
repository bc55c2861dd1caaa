// "0x1f00": how error messages print addresses.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace kvbm::detail {

inline std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace kvbm::detail
