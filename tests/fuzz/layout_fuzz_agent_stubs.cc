// The agent side of src/layout/layout.cc (registering a local layout's regions, and
// describing them for to_bytes), which decoding never reaches: a decoded layout is remote
// and serializes from its descriptors. Stubs let layout_fuzz link without the agent.
#include "kvbm/remote/agent_registration.h"

namespace kvbm {

Status register_with_agent(RegisterableStorage&, xfer::Agent&, const AgentRegistrationOptions&) {
  return err(ErrorCode::InvalidArgument, "layout_fuzz has no agent");
}

bool is_registered_with_agent(const RegisterableStorage&) {
  return false;
}

Result<RemoteDescriptor> remote_descriptor_of(const RegisterableStorage&) {
  return err(ErrorCode::NotRegistered, "layout_fuzz has no agent");
}

}  // namespace kvbm
