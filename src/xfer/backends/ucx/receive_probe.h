// Whether a worker still receives over shared memory. UCX 1.13's shared-memory transports
// deliver every peer's messages to a worker through one receive queue, read in order: a
// peer killed while it wrote an entry leaves that entry unfinished, and every message
// behind it, from any peer, waits forever. UCX cannot see it (its shared memory has no
// peer failure detection). The probe sends one active message to the worker from a second
// worker of the same context, through shared memory as a peer on this host would, and
// drives both until it arrives or `patience` passes. The UCX backend asks it when a peer
// reached over shared memory failed, and replaces its worker when the queue is blocked.
//
// Thread safety: with the lock that serializes the probed worker held.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <string_view>

namespace kvbm::xfer::detail::ucx {

// The probe's message (an 8-byte token, no body).
constexpr unsigned kReceiveProbeAmId = 12;

class ReceiveProbe {
 public:
  // The handler of kReceiveProbeAmId on the probed worker (arg: this probe).
  static ucs_status_t on_probe(void* arg, const void* header, size_t header_length, void* data,
                               size_t length, const ucp_am_recv_param_t* param);
  // True when a message sent to `worker` (whose address is `address`) from a new worker
  // on `context` did not arrive within `patience`. False where no probe could be sent
  // (then nothing says the queue is blocked).
  bool blocked(ucp_context_h context, ucp_worker_h worker, std::string_view address,
               std::chrono::milliseconds patience);

 private:
  uint64_t sent_ = 0;
  uint64_t seen_ = 0;
};

}  // namespace kvbm::xfer::detail::ucx
