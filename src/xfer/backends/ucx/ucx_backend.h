// The UCX backend: host memory (DRAM) within and across processes and hosts, over
// whatever UCX selects (shared memory, CMA, TCP, verbs; UCX_TLS and UCX_NET_DEVICES are
// honoured). Regions are ucp_mem_map'ed and published as packed remote keys; READ and
// WRITE are ucp_get/put followed by an endpoint flush, and a request is done only when
// every one of them called back without error (a flush may report success after the
// peer failed, with gets that never landed). Where UCX 1.13 would only emulate ucp_put/get
// (no RDMA transport between the two agents: TCP, shared memory), READ and WRITE go over
// the backend's own protocol on UCX active messages instead (am_rma.h: the target checks
// each range against the memory it registered, and a request is done when every
// operation's reply arrived). Notifications are active messages sent after that, so they
// arrive after the data is visible.
//
// A peer's bytes: its connection data names the transport and its UCX version (another
// major.minor is refused), and its worker address and packed keys are checked against
// the layout this UCX writes before UCX sees them (peer_check.h). So peers must run UCX
// with the same memory domains for host memory (same UCX version and UCX_TLS).
//
// Same host: a peer on this machine is reached by mapping its shareable memory or by CMA
// (same_host.h), the bytes moving in the caller's thread; only notifications go over UCX.
//
// Remote files: FILE regions registered here are served to peers (file_server.h), and a
// peer's FILE regions are reached through their owner: each chunk (file_wire.h) is an
// active message that the owner's serving thread (file_serving_thread.h) answers by
// reading into or writing from a bounded staging buffer. The notification follows the
// last chunk's reply, so it arrives once a WRITE is in the file. This agent's own files
// stay with POSIX.
//
// Failed peers: over TCP (and other transports with peer-failure reporting) UCX reports
// a dead peer, and its requests end with an error. UCX's shared-memory transports cannot
// (the same-host path checks the peer's process instead): with same_host=off over them,
// requests to a dead peer end at the agent's peer timeout. A peer killed while it wrote
// into this worker's receive queue leaves the queue blocked for every peer: when a peer
// over shared memory fails, the backend probes the queue (receive_probe.h) and, where it
// is blocked, replaces its worker. Requests in flight then fail ("connection reset"),
// peers it had connected to are connected again from the new worker, and its connection
// data (its new address) is in the agent's metadata, published again to etcd where it was
// published; a peer that loaded the old metadata must load the new one to reach it.
//
// Known UCX 1.13 issue: file requests reach the owner with UCX's reply endpoint; an owner
// that also creates its own endpoint to such a peer (loads its metadata, e.g. to notify
// it) can, over TCP, fail a UCX wire-up assertion (ucp_ep.inl:215, remote_id). Seen once
// in CI; not yet worked around.
#pragma once

#include <memory>

#include "kvbm/result.h"
#include "xfer/backend.h"

namespace kvbm::xfer::detail {

// Params: "same_host" = "auto" (map, else CMA, else UCX; the default, or the environment's
// KVBM_UCX_SAME_HOST), "cma" or "off" (UCX alone); "rma" = "auto", "native" or "am"
// (am_rma.h; KVBM_UCX_RMA). UCX reads its own UCX_* environment.
Result<std::unique_ptr<Backend>> make_ucx_backend(const BackendEnv& env,
                                                  const BackendParams& params);

}  // namespace kvbm::xfer::detail
