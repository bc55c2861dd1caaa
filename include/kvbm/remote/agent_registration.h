// Registering storages with a transfer agent.
//
// A registered storage holds its agent registration under xfer::Agent::kRegistrationKey;
// it is released when the storage is destroyed or by deregister_from_agent(). Disk
// storages follow this rule: registration unlinks the file once it succeeded (the
// bytes stay reachable through the fd), and a Disk storage that is already unlinked
// cannot be registered. Not thread-safe per storage (see kvbm/storage/registration.h).
#pragma once

#include "kvbm/export.h"

#include <optional>
#include <string>

#include "kvbm/remote/remote_descriptor.h"
#include "kvbm/remote/remote_storage.h"
#include "kvbm/result.h"
#include "kvbm/storage/registration.h"
#include "kvbm/xfer/agent.h"

namespace kvbm {

/// How register_with_agent registers a storage.
struct KVBM_API AgentRegistrationOptions {
  std::string backend;  ///< register with this backend only (default: all that fit)
};

/// AlreadyRegistered if registered already; InvalidArgument for an unlinked Disk storage;
/// the agent's error otherwise.
KVBM_API Status register_with_agent(RegisterableStorage& storage, xfer::Agent& agent,
                                    const AgentRegistrationOptions& options = {});
KVBM_API Status deregister_from_agent(RegisterableStorage& storage);
KVBM_API bool is_registered_with_agent(const RegisterableStorage& storage);
/// The agent's name, or nullopt when not registered.
KVBM_API std::optional<std::string> registered_agent_name(const RegisterableStorage& storage);
/// The storage's RemoteStorage, only while it is registered.
KVBM_API std::optional<RemoteStorage> remote_storage_of(const RegisterableStorage& storage);
/// RemoteStorage plus the agent's name: what a peer needs. NotRegistered if not registered.
KVBM_API Result<RemoteDescriptor> remote_descriptor_of(const RegisterableStorage& storage);

}  // namespace kvbm
