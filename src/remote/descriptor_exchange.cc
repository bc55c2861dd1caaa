// Descriptors over the side channel (kvbm/remote/descriptor_exchange.h): publish_descriptor
// on the owner, fetch_descriptor (the item, then the owner's metadata) on the reader.
#include "kvbm/remote/descriptor_exchange.h"

namespace kvbm {
namespace {

// "host:port", with IPv6 literals bracketed.
std::string endpoint(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

}  // namespace

Status publish_descriptor(xfer::Agent& owner, const std::string& key, const RemoteDescriptor& d) {
  if (d.agent_name() != owner.name()) {
    return err(ErrorCode::InvalidArgument, "descriptor for key '", key, "' names agent '",
               d.agent_name(), "', not the publishing agent '", owner.name(), "'");
  }
  return owner.publish(key, d.to_bytes());
}

Result<RemoteDescriptor> fetch_descriptor(xfer::Agent& reader, const std::string& host,
                                          uint16_t port, const std::string& key,
                                          std::chrono::milliseconds timeout,
                                          OwnerMetadata metadata) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  const std::string where = endpoint(host, port);
  auto bytes = reader.fetch_published(host, port, key, timeout);
  if (!bytes) return bytes.error();
  auto d = RemoteDescriptor::from_bytes(*bytes);
  if (!d) {
    return err(d.code(), "item '", key, "' from ", where,
               " is not a remote descriptor: ", d.error().message);
  }
  const std::string& owner = d->agent_name();
  if (owner == reader.name()) return d;  // the reader's own memory: no metadata needed
  if (metadata == OwnerMetadata::LoadIfUnknown && reader.has_remote(owner)) return d;

  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) {
    return err(ErrorCode::Timeout, "descriptor '", key, "' from ", where, ": no time left within ",
               timeout.count(), " ms to load the metadata of agent '", owner, "'");
  }
  auto name = reader.fetch_remote_metadata(host, port, left);
  if (!name) return name.error();
  if (*name != owner) {
    return err(ErrorCode::InvalidArgument, "descriptor '", key, "' names agent '", owner,
               "', but the agent at ", where, " is '", *name, "'");
  }
  return d;
}

}  // namespace kvbm
