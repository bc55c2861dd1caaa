#include "kvbm/remote/agent_registration.h"

#include "kvbm/log.h"
#include "kvbm/xfer/mem_type.h"

namespace kvbm {
namespace {

const xfer::MemoryRegistration* agent_handle(const RegisterableStorage& storage) {
  return dynamic_cast<const xfer::MemoryRegistration*>(
      storage.registration_handle(xfer::Agent::kRegistrationKey));
}

}  // namespace

Status register_with_agent(RegisterableStorage& storage, xfer::Agent& agent,
                           const AgentRegistrationOptions& options) {
  // The agent enforces the Disk rule (an unlinked file is refused; registration unlinks).
  return agent.register_storage(storage, options.backend);
}

Status deregister_from_agent(RegisterableStorage& storage) {
  return storage.deregister(xfer::Agent::kRegistrationKey);
}

bool is_registered_with_agent(const RegisterableStorage& storage) {
  return agent_handle(storage) != nullptr;
}

std::optional<std::string> registered_agent_name(const RegisterableStorage& storage) {
  const auto* h = agent_handle(storage);
  if (h == nullptr) return std::nullopt;
  return h->agent_name();
}

std::optional<RemoteStorage> remote_storage_of(const RegisterableStorage& storage) {
  if (!is_registered_with_agent(storage)) return std::nullopt;
  auto r = RemoteStorage::from_storage_with_offset(storage, 0, storage.size());
  if (!r) return std::nullopt;
  return *r;
}

Result<RemoteDescriptor> remote_descriptor_of(const RegisterableStorage& storage) {
  auto name = registered_agent_name(storage);
  if (!name) {
    return err(ErrorCode::NotRegistered, storage.type().to_string(),
               " storage is not registered with an agent");
  }
  auto r = RemoteStorage::from_storage_with_offset(storage, 0, storage.size());
  if (!r) return r.error();
  return RemoteDescriptor(*r, *name);
}

}  // namespace kvbm
