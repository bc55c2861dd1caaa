// Sends the remote-file protocol's messages (file_wire.h), both the initiator's chunk
// requests and the owner's replies: one eager active message each, so that each arrives
// whole in its receiver's callback. Thread safety: with the backend's lock held (it
// serializes the worker).
#pragma once

#include <ucp/api/ucp.h>

#include <functional>
#include <memory>
#include <string>

#include "xfer/backends/ucx/file_server.h"

namespace kvbm::xfer::detail::ucx {

struct FileSendCtx {
  std::string header;
  std::string error_text;
  Staging keep{nullptr, {}};  // the owner's staging buffer, until the reply is sent
  std::function<void(ucs_status_t)> done;
};

// Sends one eager active message; `done` (if any) runs on completion, with mu_ held.
void send_file_am(ucp_ep_h ep, unsigned id, std::unique_ptr<FileSendCtx> ctx, const void* body,
                  size_t len, bool reply_ep);

}  // namespace kvbm::xfer::detail::ucx
