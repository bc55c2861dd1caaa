#include "xfer/backends/ucx/notifications.h"

#include <cstring>
#include <utility>

#include "kvbm/log.h"

namespace kvbm::xfer::detail::ucx {

std::string encode_notif_header(std::string_view sender, uint64_t connection, uint64_t seq) {
  NotifHeader h{kNotifMagic, static_cast<uint32_t>(sender.size()), connection, seq};
  std::string out(reinterpret_cast<const char*>(&h), sizeof h);
  out += sender;
  return out;
}

Result<DecodedNotif> decode_notif_header(std::string_view header, size_t body_len, bool rndv) {
  // Bytes from the network: check every length before use.
  NotifHeader h{};
  if (rndv || header.size() < sizeof h || body_len > kMaxNotifBytes) {
    return err(ErrorCode::InvalidArgument, "malformed notification");
  }
  std::memcpy(&h, header.data(), sizeof h);
  if (h.magic != kNotifMagic || h.name_len == 0 || h.name_len != header.size() - sizeof h) {
    return err(ErrorCode::InvalidArgument, "notification with a bad header");
  }
  return DecodedNotif{h, std::string(header.substr(sizeof h))};
}

bool NotificationInbox::deliver(const NotifHeader& h, std::string sender, std::string message,
                                const std::function<void(Notification)>& on_notification) {
  Inbox& box = inboxes_[sender];
  if (box.connection != h.connection) box = Inbox{h.connection, 0, {}};
  if (h.seq != box.next_seq) {
    if (h.seq > box.next_seq && box.pending.size() < kMaxReorder) {
      box.pending.emplace(h.seq, std::move(message));
      return false;
    }
    log(LogLevel::Warn,
        "UCX: notification sequence from '" + sender + "' broken; delivering as received");
    box.next_seq = h.seq;
  }
  ++box.next_seq;
  on_notification(Notification{sender, std::move(message)});
  for (auto it = box.pending.begin(); it != box.pending.end() && it->first == box.next_seq;) {
    on_notification(Notification{sender, std::move(it->second)});
    ++box.next_seq;
    it = box.pending.erase(it);
  }
  return true;
}

}  // namespace kvbm::xfer::detail::ucx
