#include "kvbm/storage/registration.h"

#include "kvbm/log.h"

namespace kvbm {

Status RegisterableStorage::register_handle(std::string key,
                                            std::unique_ptr<RegistrationHandle> handle) {
  if (key.empty()) return err(ErrorCode::InvalidArgument, "registration key must not be empty");
  if (!handle)
    return err(ErrorCode::InvalidArgument, "null registration handle for key '", key, "'");
  if (is_registered(key)) {
    if (auto st = handle->release(); !st) {
      log(LogLevel::Error,
          "releasing duplicate registration '" + key + "': " + st.error().to_string());
    }
    return err(ErrorCode::AlreadyRegistered, "storage already registered under key '", key, "'");
  }
  handles_.emplace_back(std::move(key), std::move(handle));
  return {};
}

bool RegisterableStorage::is_registered(std::string_view key) const {
  return registration_handle(key) != nullptr;
}

RegistrationHandle* RegisterableStorage::registration_handle(std::string_view key) const {
  for (const auto& [k, h] : handles_) {
    if (k == key) return h.get();
  }
  return nullptr;
}

Status RegisterableStorage::deregister(std::string_view key) {
  for (auto it = handles_.begin(); it != handles_.end(); ++it) {
    if (it->first != key) continue;
    std::unique_ptr<RegistrationHandle> handle = std::move(it->second);
    handles_.erase(it);
    return handle->release();
  }
  return err(ErrorCode::NotRegistered, "storage has no registration under key '", key, "'");
}

RegisterableStorage& RegisterableStorage::operator=(RegisterableStorage&& other) noexcept {
  if (this != &other) {
    release_registrations();
    handles_ = std::move(other.handles_);
    other.handles_.clear();
  }
  return *this;
}

RegisterableStorage::~RegisterableStorage() {
  release_registrations();
}

void RegisterableStorage::release_registrations() noexcept {
  while (!handles_.empty()) {
    auto [key, handle] = std::move(handles_.back());
    handles_.pop_back();
    if (auto st = handle->release(); !st) {
      log(LogLevel::Error,
          "failed to release registration '" + key + "': " + st.error().to_string());
    }
  }
}

}  // namespace kvbm
