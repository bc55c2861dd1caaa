// Registration handles: what a backend (a transfer agent, cuFile, ...) returns when it
// registers a storage, kept by the storage under the backend's key ("ucx", "agent", ...).
//
// A RegisterableStorage releases every handle it still holds when it is destroyed, in
// reverse order of registration and before its memory is freed. A release that fails is
// logged (kvbm/log.h), never thrown. Not thread-safe: register and deregister from one
// thread at a time.
#pragma once

#include "kvbm/export.h"

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvbm/result.h"
#include "kvbm/storage/storage.h"

namespace kvbm {

/// A registration of a storage with something (an agent, an engine), owned by the storage
/// and released before the storage's memory goes.
class KVBM_API RegistrationHandle {
 public:
  virtual ~RegistrationHandle() = default;
  /// Undoes the registration. Called exactly once, by the storage that holds the handle.
  virtual Status release() = 0;
};

/// A storage that owns registrations, keyed by who registered it ("agent", ...).
class KVBM_API RegisterableStorage : public Storage {
 public:
  /// Takes ownership of `handle` under `key`. AlreadyRegistered if the key is taken (the
  /// new handle is then released at once); InvalidArgument for an empty key or null handle.
  Status register_handle(std::string key, std::unique_ptr<RegistrationHandle> handle);

  /// Whether a handle is held under `key`.
  bool is_registered(std::string_view key) const;
  /// The handle under `key`, or nullptr. The storage keeps ownership.
  RegistrationHandle* registration_handle(std::string_view key) const;
  /// Releases and drops the handle under `key` now. NotRegistered if there is none; the
  /// release's own error otherwise (the handle is dropped either way).
  Status deregister(std::string_view key);

 protected:
  RegisterableStorage() = default;
  /// Moves the registrations with the storage.
  RegisterableStorage(RegisterableStorage&&) noexcept = default;
  /// Releases this storage's registrations, then takes `other`'s.
  RegisterableStorage& operator=(RegisterableStorage&& other) noexcept;
  ~RegisterableStorage() override;

  /// Releases all handles, newest first. Every concrete storage calls this at the top of
  /// its destructor (and before reusing itself as a move target), so that handles go
  /// before the memory they describe.
  void release_registrations() noexcept;

 private:
  std::vector<std::pair<std::string, std::unique_ptr<RegistrationHandle>>> handles_;
};

}  // namespace kvbm
