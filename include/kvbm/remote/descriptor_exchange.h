// Handing a RemoteDescriptor to a peer over the owner's side channel: the owner publishes
// it under a key on its agent (xfer::Agent::publish; served by the agent's listen()), and
// the reader, knowing only host, port and key, fetches it and gets the owner's metadata
// loaded, ready for a READ or WRITE request.
//
//   // process A (owner), listening on port P
//   auto d = remote_descriptor_of(blocks).value();  d.set_notif("blocks 0-63 received");
//   publish_descriptor(*agent_a, "prefill/42", d);
//   // process B (reader)
//   auto d = fetch_descriptor(*agent_b, "hostA", P, "prefill/42").value();
//   agent_b->create_request(Op::Read, local, d.to_desc_list(), d.agent_name(), d.notif());
//
// Thread safety: as the agents' methods (any thread). Ownership: nothing is kept; the
// owner's agent holds the published bytes until unpublished or destroyed.
#pragma once

#include "kvbm/export.h"

#include <chrono>
#include <cstdint>
#include <string>

#include "kvbm/remote/remote_descriptor.h"
#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"

namespace kvbm {

/// Publishes d.to_bytes() under `key` on `owner`, replacing an earlier item with that key.
/// InvalidArgument if d names an agent other than owner (a reader would address the
/// wrong agent); otherwise xfer::Agent::publish's errors (empty or over-long key).
KVBM_API Status publish_descriptor(xfer::Agent& owner, const std::string& key,
                                   const RemoteDescriptor& d);

/// Whether fetch_descriptor loads the owner's metadata. (A descriptor of the reader's own
/// memory needs none either way.)
enum class OwnerMetadata {
  /// Only when the reader does not know the owner yet.
  LoadIfUnknown,
  /// Always fetch it afresh, for when the owner may have registered memory since the
  /// reader last loaded it. Replacing metadata makes requests the reader prepared against
  /// the old metadata fail on their next post.
  Reload,
};

/// Fetches the descriptor published under `key` by the agent listening at host:port,
/// decodes it, and loads the owner's metadata from the same host:port as `metadata` says;
/// all within `timeout`. Errors: xfer::Agent::fetch_published's (Remote naming the key if
/// nothing is published under it; Timeout; Io); InvalidArgument from the decoder for bytes
/// that are not a descriptor; InvalidArgument if the descriptor names an agent other than
/// the one at host:port; fetch_remote_metadata's otherwise.
KVBM_API Result<RemoteDescriptor> fetch_descriptor(
    xfer::Agent& reader, const std::string& host, uint16_t port, const std::string& key,
    std::chrono::milliseconds timeout = std::chrono::seconds(5),
    OwnerMetadata metadata = OwnerMetadata::LoadIfUnknown);

}  // namespace kvbm
