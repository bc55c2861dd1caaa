// The UCX layer the UCX backend and the CUDA backend's staged path share: the context,
// worker and endpoints each keeps (one worker per backend), opened and closed the same
// way; endpoint failures noted inside UCX callbacks and handled after them; the host
// identity published in connection data; the UCX_TLS check; UCX errors as values.
// Internal to the backends; no backend reaches into another's private header.
//
// Thread safety: the caller holds the lock that serializes its worker
// (UCS_THREAD_MODE_SERIALIZED); the free functions without state may be called anywhere.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// UCX logs to stdout unless UCX_LOG_FILE says otherwise, and stdout belongs to the
// application (`kvbm ... --json` writes its document there). Once per process, unless the
// user set UCX_LOG_FILE, UCX's messages go to stderr instead, in UCX's level filter.
// open_worker calls it; idempotent and thread-safe.
void route_ucx_log_to_stderr();

// A context with `features` (UCP_FEATURE_*) and one serialized worker on it; `address`
// gets the worker's packed address. Internal errors name the UCX call. On failure, what
// was made is left in *context / *worker for the caller's destructor to release.
Status open_worker(uint64_t features, ucp_context_h* context, ucp_worker_h* worker,
                   std::string* address);
// One more serialized worker on `context`, as open_worker makes; on failure *worker is
// null, or the worker made, for the caller to destroy.
Status create_worker(ucp_context_h context, ucp_worker_h* worker, std::string* address);

// Receives active messages `id` whole (UCP_AM_FLAG_WHOLE_MSG) in `cb(arg, ...)`.
Status set_am_handler(ucp_worker_h worker, unsigned id, ucp_am_recv_callback_t cb, void* arg);

// An endpoint to the worker whose packed address is `address`; errors on it go to
// `on_error(arg, ep, status)` when `peer_errors` (UCX reports failed peers only in that
// mode, which shared-memory transports do not support).
ucs_status_t open_endpoint(ucp_worker_h worker, std::string_view address, bool peer_errors,
                           ucp_err_handler_cb_t on_error, void* arg, ucp_ep_h* ep);

// Closes `ep` at once (a forced close does not wait for the peer) and progresses the
// worker until UCX has let it go, for a bounded number of rounds.
void close_endpoint(ucp_worker_h worker, ucp_ep_h ep);

// `code` with "<what>: <UCX's text for s>".
Error ucx_error(ErrorCode code, std::string_view what, ucs_status_t s);

// This machine's identity (its boot id, at most 64 bytes; "unknown-host" if unreadable),
// published with a worker address so that a peer knows whether it shares our host.
std::string host_boot_id();

// A random 64-bit number: where a backend's connection tokens start counting, so that
// two processes' connections to one peer never share a token.
uint64_t random_seed();

// Whether UCX_TLS leaves UCX any shared-memory transport (which cannot report failed
// peers, so endpoints over it are opened without peer error handling).
bool tls_allows_shared_memory();

// Endpoint failures UCX reports from inside ucp_worker_progress, where nothing may be
// torn down: noted there (on_error, with this object as the handler's arg), handled by
// the backend after progress returns.
class FailedEndpoints {
 public:
  // The ucp_err_handler_cb_t for open_endpoint; `arg` is a FailedEndpoints*.
  static void on_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  bool empty() const { return failed_.empty(); }
  void clear() { failed_.clear(); }  // the endpoints went with their worker
  // The failure noted for `ep` and not yet taken, or UCS_OK.
  ucs_status_t status_of(ucp_ep_h ep) const;
  // For each failed endpoint, the peer in `peers` (a map of name -> shared_ptr to a peer
  // with an `ep`) that uses it goes to `close(peer, error)`; then forgets them all.
  template <class Peers, class Close>
  void close_failed(Peers& peers, Close&& close) {
    auto failed = std::move(failed_);
    failed_.clear();
    for (auto& [ep, status] : failed) {
      for (auto& [name, peer] : peers) {
        if (peer->ep != ep) continue;
        auto keep = peer;  // the map's entry goes inside
        close(keep,
              ucx_error(ErrorCode::Remote, "connection to agent '" + name + "' failed", status));
        break;
      }
    }
  }

 private:
  std::vector<std::pair<ucp_ep_h, ucs_status_t>> failed_;
};

}  // namespace kvbm::xfer::detail
