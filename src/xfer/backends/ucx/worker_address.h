// A walk over a UCX worker address (the bytes ucp_worker_get_address gives and
// ucp_ep_create reads), in the wire format of the UCX minor version kvbm links (1.13,
// address versions 1 and 2, not unified mode). UCX reads a peer's address trusting every
// length and index in it; kvbm walks it first, so that one whose lengths run past its end,
// whose indices are out of UCX's ranges, or whose transports' addresses have sizes this
// process's UCX never writes is refused before UCX sees it.
//
// Thread safety: pure functions. The views in a parsed address point into the bytes given.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// One transport interface of an address, with the device it is on.
struct UcxAddressEntry {
  uint32_t md_index = 0;       // the peer's memory domain of the device
  uint16_t tl_checksum = 0;    // the transport's name, as UCX's CRC-16 of it
  std::string_view device;     // the device's address (empty: none)
  std::string_view interface;  // the interface's address (empty: none)
  uint32_t caps = 0;           // capability bits as packed (priority byte cleared)
};

struct UcxWorkerAddress {
  uint8_t version = 0;  // 0: UCX address version 1, 1: version 2
  uint8_t flags = 0;    // the header's flags (uuid, client id, debug name)
  std::vector<UcxAddressEntry> entries;
};

// InvalidArgument naming what is wrong and where (byte offset) when the bytes do not walk
// exactly as a worker address: a length past the end, more interfaces than UCX holds, an
// endpoint address (worker addresses carry none), bytes after the last device.
Result<UcxWorkerAddress> parse_worker_address(std::string_view bytes);

// The checksum by which an address names a transport ("tcp", "posix", ...).
uint16_t transport_checksum(const char* name);

}  // namespace kvbm::xfer::detail
