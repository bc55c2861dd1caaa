#include "kvbm/result.h"

#include <cstdio>

namespace kvbm {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::AllocationFailed:
      return "AllocationFailed";
    case ErrorCode::OutOfBounds:
      return "OutOfBounds";
    case ErrorCode::RegistrationFailed:
      return "RegistrationFailed";
    case ErrorCode::AlreadyRegistered:
      return "AlreadyRegistered";
    case ErrorCode::NotRegistered:
      return "NotRegistered";
    case ErrorCode::DeviceUnavailable:
      return "DeviceUnavailable";
    case ErrorCode::InvalidArgument:
      return "InvalidArgument";
    case ErrorCode::Io:
      return "Io";
    case ErrorCode::Unsupported:
      return "Unsupported";
    case ErrorCode::NotFound:
      return "NotFound";
    case ErrorCode::Timeout:
      return "Timeout";
    case ErrorCode::Remote:
      return "Remote";
    case ErrorCode::Cancelled:
      return "Cancelled";
    case ErrorCode::Internal:
      return "Internal";
  }
  return "Unknown";
}

std::string Error::to_string() const {
  std::string s(kvbm::to_string(code));
  s += ": ";
  s += message;
  return s;
}

void abort_on_bad_access(const Error& error) {
  std::fprintf(stderr, "kvbm: value() called on an error result: %s\n", error.to_string().c_str());
  std::abort();
}

}  // namespace kvbm
