// The UCX environment of a run whose peer is a process on this host that the tool starts
// itself (kvbm demo, kvbm bench soak, kvbm bench xfer without --peer): the transports the
// tool chose, and for TCP the loopback device alone, unless the user named devices
// (UCX_NET_DEVICES). Otherwise UCX may connect through any address of the host, and a
// network device that goes away meanwhile (a container's, another test's namespace) takes
// the connection with it: a request that hangs until the peer timeout.
#pragma once

namespace kvbm::tools {

// Sets UCX_TLS to `tls` (null: leaves it as it is) and, where UCX_TLS then names TCP,
// UCX_NET_DEVICES to "lo" if the user did not set it. Read by our agent and inherited by
// the processes we start (the peer, ucx_perftest).
void use_loopback_env(const char* tls);

}  // namespace kvbm::tools
