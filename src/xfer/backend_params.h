// The checks every backend makes of its BackendParams (text keys and values), in one
// place so that their errors read alike: an unknown key, or a value that is not a
// decimal number in range, is InvalidArgument naming the backend, the key and the value.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"

namespace kvbm::xfer::detail {

// InvalidArgument for the first key of params not in known (the message lists them).
Status check_param_keys(std::string_view backend, const BackendParams& params,
                        std::initializer_list<std::string_view> known);

// params[key] as a number in [min, max]; fallback where the key is absent (not checked).
Result<uint64_t> number_param(std::string_view backend, const BackendParams& params,
                              std::string_view key, uint64_t fallback, uint64_t min, uint64_t max);

}  // namespace kvbm::xfer::detail
