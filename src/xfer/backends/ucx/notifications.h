// The UCX backend's notifications: their wire header (sent as an active message's
// header, before the sender's name; the message is the body) and the receive side's
// per-sender ordering. The header comes from the network: decoded with bounds checks.
//
// Thread safety: NotificationInbox is not synchronized (the backend's lock guards it).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "kvbm/result.h"
#include "kvbm/xfer/agent.h"

namespace kvbm::xfer::detail::ucx {

constexpr unsigned kNotifAmId = 7;
constexpr uint32_t kNotifMagic = 0x4b564e31;  // "KVN1"
constexpr size_t kMaxNotifBytes = 1 << 20;

// Precedes the sender's name in every notification's active-message header.
struct NotifHeader {
  uint32_t magic;
  uint32_t name_len;
  uint64_t connection;  // the sender's connection id: sequence numbers restart per connection
  uint64_t seq;
};

// The header bytes of a notification from `sender`: NotifHeader, then the name.
std::string encode_notif_header(std::string_view sender, uint64_t connection, uint64_t seq);

// A received notification's header and sender, from an active message's header bytes,
// the length of its body and whether it came by rendezvous. InvalidArgument, saying
// "malformed notification" (rendezvous, short header, body too long) or "notification
// with a bad header" (magic, name length).
struct DecodedNotif {
  NotifHeader h;
  std::string sender;
};
Result<DecodedNotif> decode_notif_header(std::string_view header, size_t body_len, bool rndv);

// Receive-side ordering: each sender's notifications are delivered in its sequence
// order, per connection, holding back at most kMaxReorder early ones.
class NotificationInbox {
 public:
  static constexpr size_t kMaxReorder = 4096;
  // Delivers `message` (and any held back behind it) to `on_notification`, or holds it
  // back. Returns whether it was delivered.
  bool deliver(const NotifHeader& h, std::string sender, std::string message,
               const std::function<void(Notification)>& on_notification);
  // Drops the ordering state of `sender` (disconnected).
  void forget(const std::string& sender) { inboxes_.erase(sender); }

 private:
  // Receive-side ordering of one sender's notifications.
  struct Inbox {
    uint64_t connection = 0;
    uint64_t next_seq = 0;
    std::map<uint64_t, std::string> pending;
  };
  std::map<std::string, Inbox> inboxes_;
};

}  // namespace kvbm::xfer::detail::ucx
