// Registering storages with a transfer agent (the seed's NixlRegisterableStorage).
//
// A registered storage holds its agent registration under xfer::Agent::kRegistrationKey;
// it is released when the storage is destroyed or by deregister_from_agent(). Disk
// storages follow the seed's rule: registration unlinks the file once it succeeded (the
// bytes stay reachable through the fd), and a Disk storage that is already unlinked
// cannot be registered. Not thread-safe per storage (see kvbm/storage/registration.h).
#pragma once

#include <optional>
#include <string>

#include "kvbm/remote/remote_descriptor.h"
#include "kvbm/remote/remote_storage.h"
#include "kvbm/result.h"
#include "kvbm/storage/registration.h"
#include "kvbm/xfer/agent.h"

namespace kvbm {

struct AgentRegistrationOptions {
  std::string backend;  // register with this backend only (default: all that fit)
};

// AlreadyRegistered if registered already; InvalidArgument for an unlinked Disk storage;
// the agent's error otherwise.
Status register_with_agent(RegisterableStorage& storage, xfer::Agent& agent,
                           const AgentRegistrationOptions& options = {});
Status deregister_from_agent(RegisterableStorage& storage);
bool is_registered_with_agent(const RegisterableStorage& storage);
// The agent's name, or nullopt when not registered.
std::optional<std::string> registered_agent_name(const RegisterableStorage& storage);
// The storage's RemoteStorage, only while it is registered (the seed's as_nixl_descriptor).
std::optional<RemoteStorage> remote_storage_of(const RegisterableStorage& storage);
// RemoteStorage plus the agent's name: what a peer needs. NotRegistered if not registered.
Result<RemoteDescriptor> remote_descriptor_of(const RegisterableStorage& storage);

}  // namespace kvbm
