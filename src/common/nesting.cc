#include "common/nesting.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace kvbm::detail {

bool cbor_nests_deeper_than(std::string_view in, size_t max_depth) {
  constexpr uint64_t kIndefinite = UINT64_MAX;
  std::vector<uint64_t> left = {1};  // items left in each open container; the top is one item
  size_t pos = 0;
  while (pos < in.size() && !left.empty()) {
    if (left.back() == 0) {
      left.pop_back();
      continue;
    }
    const auto head = static_cast<uint8_t>(in[pos++]);
    if (head == 0xff) {  // "break": ends an indefinite-length container
      if (left.back() != kIndefinite) return false;
      left.pop_back();
      continue;
    }
    if (left.back() != kIndefinite) --left.back();
    const uint8_t major = head >> 5;
    const uint8_t info = head & 31;
    uint64_t arg = info;
    const bool indefinite = info == 31;
    if (info >= 24 && info <= 27) {
      const size_t n = size_t{1} << (info - 24);
      if (n > in.size() - pos) return false;
      arg = 0;
      for (size_t i = 0; i < n; ++i) arg = (arg << 8) | static_cast<uint8_t>(in[pos++]);
    } else if (info >= 28 && !indefinite) {
      return false;
    }
    const uint64_t remaining = in.size() - pos;  // every item takes at least one byte
    switch (major) {
      case 2:
      case 3:
        if (indefinite) {
          left.push_back(kIndefinite);
        } else {
          if (arg > remaining) return false;
          pos += arg;
        }
        break;
      case 4:
      case 5:
        if (indefinite) {
          left.push_back(kIndefinite);
        } else {
          left.push_back(std::min(arg, remaining) * (major == 5 ? 2 : 1));
        }
        break;
      case 6:
        left.push_back(1);
        break;
      default:
        break;
    }
    if (left.size() - 1 > max_depth) return true;
  }
  return false;
}

bool json_nests_deeper_than(std::string_view in, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

}  // namespace kvbm::detail
