// Errors as values: every kvbm call that can fail returns a Result<T> (or Status).
//
// An Error carries a typed code and a message that names the offending values
// ("offset 4096 + size 8192 exceeds storage size 8192"). Result<T> holds either a T
// or an Error; it is a plain value type and may be moved between threads.
#pragma once

#include "kvbm/export.h"

#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace kvbm {

enum class ErrorCode {
  AllocationFailed,
  OutOfBounds,
  RegistrationFailed,
  AlreadyRegistered,
  NotRegistered,
  DeviceUnavailable,
  InvalidArgument,
  Io,
  Unsupported,
  NotFound,
  Timeout,
  Remote,  ///< the peer failed, disappeared or sent something we cannot accept
  Cancelled,
  Internal,
};

KVBM_API std::string_view to_string(ErrorCode code);

/// What went wrong: a code to branch on and a message for people.
struct KVBM_API Error {
  ErrorCode code;       ///< the kind of failure
  std::string message;  ///< what failed, naming the offending values

  /// "InvalidArgument: size must be > 0"
  std::string to_string() const;
};

/// Shorthand used throughout: return kvbm::err(ErrorCode::Io, "open ", path, ": ", strerror(e));
template <typename... Parts>
Error err(ErrorCode code, Parts&&... parts) {
  std::string msg;
  auto append = [&msg](auto&& p) {
    using P = std::decay_t<decltype(p)>;
    if constexpr (std::is_arithmetic_v<P> && !std::is_same_v<P, char>) {
      msg += std::to_string(p);
    } else {
      msg += p;
    }
  };
  (append(std::forward<Parts>(parts)), ...);
  return Error{code, std::move(msg)};
}

/// A T, or the Error that kept the call from making one.
template <typename T>
class [[nodiscard]] Result {
 public:
  ///@{
  /// A value, or an error (implicit, so a function returns either).
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT
  ///@}

  ///@{
  /// Whether this holds a value.
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  ///@}

  ///@{
  /// Precondition: ok(). Accessing the value of an error aborts with the error's text,
  /// so misuse is loud rather than undefined.
  T& value() & { return check(), std::get<0>(v_); }
  const T& value() const& { return check(), std::get<0>(v_); }
  T&& value() && { return check(), std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T& operator*() const& { return value(); }
  ///@}
  ///@{
  /// The value, or `fallback` when this holds an error (as std::expected::value_or).
  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(fallback));
  }
  template <typename U>
  T value_or(U&& fallback) && {
    return ok() ? std::get<0>(std::move(v_)) : static_cast<T>(std::forward<U>(fallback));
  }
  ///@}

  /// Precondition: !ok().
  const Error& error() const { return std::get<1>(v_); }
  /// Precondition: !ok(). The error's code.
  ErrorCode code() const { return error().code; }

 private:
  void check() const;
  std::variant<T, Error> v_;
};

/// Success, or an Error (Status).
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;  ///< success
  /// A failure (implicit, so a function returns either).
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT

  ///@{
  /// Whether the call succeeded.
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  ///@}
  /// Precondition: !ok(). The error.
  const Error& error() const { return error_; }
  /// Precondition: !ok(). The error's code.
  ErrorCode code() const { return error_.code; }

 private:
  Error error_{ErrorCode::Internal, {}};
  bool ok_ = true;
};

using Status = Result<void>;

[[noreturn]] KVBM_API void abort_on_bad_access(const Error& error);

template <typename T>
void Result<T>::check() const {
  if (!ok()) abort_on_bad_access(error());
}

}  // namespace kvbm

// Propagates an error from an expression yielding Result<...>/Status.
#define KVBM_TRY(expr)                                      \
  do {                                                      \
    auto kvbm_try_result_ = (expr);                         \
    if (!kvbm_try_result_) return kvbm_try_result_.error(); \
  } while (0)
