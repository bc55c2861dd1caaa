// RemoteDescriptor: a RemoteStorage, the name of the
// agent that registered it, and an optional notification for that agent to receive
// after a READ or WRITE of it. Serializable to bytes (CBOR) and to JSON, so it can be
// sent to another node; decoding treats its input as untrusted. Thread safety: a value.
#pragma once

#include "kvbm/export.h"

#include <optional>
#include <string>
#include <string_view>

#include "kvbm/remote/remote_storage.h"
#include "kvbm/result.h"
#include "kvbm/xfer/types.h"

namespace kvbm {

/// What a peer needs to READ or WRITE a registered storage: its RemoteStorage, the name
/// of the agent that registered it, and an optional notification. A copyable value.
class KVBM_API RemoteDescriptor {
 public:
  /// The version of the wire forms; from_bytes() rejects others.
  static constexpr uint32_t kVersion = 1;

  /// `storage` as registered with the agent named `agent`.
  RemoteDescriptor(RemoteStorage storage, std::string agent)
      : storage_(storage), agent_(std::move(agent)) {}

  /// The described region.
  const RemoteStorage& storage() const { return storage_; }
  /// Its size in bytes.
  size_t size() const { return storage_.size(); }
  /// The agent that registered it.
  const std::string& agent_name() const { return agent_; }

  /// A notification for the reader to send with its transfer.
  void set_notif(std::string notif) { notif_ = std::move(notif); }
  /// Removes the notification.
  void clear_notif() { notif_.reset(); }
  /// The notification, if any.
  const std::optional<std::string>& notif() const { return notif_; }

  /// The descriptor list a READ or WRITE request takes for the remote side.
  xfer::DescList to_desc_list() const { return storage_.to_desc_list(); }

  ///@{
  /// The wire forms: CBOR, and JSON.
  std::string to_bytes() const;
  std::string to_json() const;
  ///@}
  /// InvalidArgument naming the problem: not CBOR/JSON, wrong version, a missing or
  /// mistyped field, an unknown memory type, an empty agent name, addr + size overflow,
  /// input over 1 MiB, CBOR nested deeper than 32 levels. Unknown fields are ignored.
  /// JSON carries the notification as text (invalid UTF-8 is replaced); bytes carry it exactly.
  ///@{
  static Result<RemoteDescriptor> from_bytes(std::string_view bytes);
  static Result<RemoteDescriptor> from_json(std::string_view json);
  ///@}

  /// Same storage, agent and notification.
  bool operator==(const RemoteDescriptor& o) const {
    return storage_ == o.storage_ && agent_ == o.agent_ && notif_ == o.notif_;
  }

 private:
  RemoteStorage storage_;
  std::string agent_;
  std::optional<std::string> notif_;
};

}  // namespace kvbm
