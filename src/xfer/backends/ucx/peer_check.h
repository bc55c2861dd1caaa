// Checks of the UCX parts of a peer's metadata before UCX sees them. UCX trusts a worker
// address and a packed remote key as its own structs: a corrupt or foreign one asserts or
// crashes inside UCX. So a peer's connection data names its transport and UCX version
// (a peer built against another UCX major.minor is refused with a clear error), and the
// address and each remote key are checked against the layout this process's own UCX
// produces (learned once from its own worker address and a probe key).
//
// Thread safety: plain values and pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// The first line of the UCX backend's connection data: "kvbm-ucx 2 ucx <major>.<minor>.<release>".
std::string ucx_transport_line();
// InvalidArgument (malformed, another format version) or Unsupported (another UCX
// major.minor than this process's), naming the agent and both versions.
Status check_transport_line(const std::string& agent, std::string_view line);

// One transport of our own worker address: the sizes of the addresses it writes.
struct UcxTransportShape {
  uint16_t checksum = 0;  // UCX's CRC-16 of the transport's name
  std::vector<size_t> device_sizes, interface_sizes;
};

// What this process's UCX puts on the wire.
struct UcxWireShape {
  uint8_t address_header = 0;  // the first byte of a worker address: its version and flags
  size_t address_len = 0;      // our own address's length
  // Our own address walked (worker_address.h); false where it does not (e.g. UCX's unified
  // mode), and then a peer's address is checked by its header and length only.
  bool address_walks = false;
  std::vector<UcxTransportShape> transports;
  // The device address of this machine's shared-memory transports (UCX's system id).
  std::string machine;
  // The flag bits of our POSIX shared-memory segment ids (how a peer's FIFO is opened).
  std::optional<uint64_t> posix_segment_flags;
  // A packed key's md map, and each of its memory domains' packed key sizes (-1: none).
  uint64_t md_map = 0;
  std::array<int16_t, 64> md_key_size{};
};
// From our own worker address and a probe key packed for host memory.
UcxWireShape learn_wire_shape(std::string_view address, std::string_view rkey);

// What a peer's worker address says of where the peer is.
struct UcxPeerAddress {
  // It lists a shared-memory transport on this machine (its device address is ours): UCX
  // will reach the peer through shared memory, whatever the peer's other lines say.
  bool same_machine = false;
};
// Refuses (InvalidArgument, naming the agent) an address that is too short or too long,
// whose version and flags header differs from ours, that does not walk
// (parse_worker_address), or that gives a transport this UCX has addresses of sizes this
// UCX never writes for it (a TCP device address must also match its address family).
// Transports this UCX does not have are left alone: UCX ignores them.
Result<UcxPeerAddress> check_worker_address(const std::string& agent, std::string_view address,
                                            const UcxWireShape& ours);
// Refuses a packed host-memory key that does not walk exactly: its md map, memory type
// (host), and for each memory domain a size byte and that many bytes; only memory domains
// our own keys use, each with our size; nothing after the last.
Status check_packed_rkey(std::string_view rkey, const UcxWireShape& ours);

}  // namespace kvbm::xfer::detail
