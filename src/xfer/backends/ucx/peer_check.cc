#include "xfer/backends/ucx/peer_check.h"

#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "common/hex.h"
#include "xfer/backends/ucx/worker_address.h"

namespace kvbm::xfer::detail {
namespace {

// Format 2: READ and WRITE may go as the backend's own active messages (am_rma.h), which
// a format-1 peer has no handler for.
constexpr std::string_view kFormat = "kvbm-ucx 2 ucx ";
// A worker address lists devices and transports; UCX's own stay well inside this.
constexpr size_t kMinAddress = 16;
constexpr size_t kMaxAddress = 64 << 10;
// UCX 1.x packs a key as [md map: u64][memory type: u8] then per memory domain [size: u8][bytes].
constexpr size_t kKeyHeader = sizeof(uint64_t) + 1;
constexpr uint8_t kHostMemory = 0;  // UCS_MEMORY_TYPE_HOST

std::string version_string(unsigned major, unsigned minor, unsigned release) {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

// UCX's shared-memory transports: their device address is the machine's system id.
bool is_shared_memory(uint16_t checksum) {
  static const std::array<uint16_t, 5> kShm = {
      transport_checksum("posix"), transport_checksum("sysv"), transport_checksum("cma"),
      transport_checksum("xpmem"), transport_checksum("knem")};
  return std::find(kShm.begin(), kShm.end(), checksum) != kShm.end();
}

// A TCP device address: flags, address family, then the IP address, or for loopback the
// machine's and network namespace's ids (UCX 1.13's uct_tcp_device_addr_t).
bool tcp_device_fits(std::string_view device) {
  constexpr uint8_t kLoopback = 1;
  constexpr size_t kLocalIds = 16;
  if (device.size() < 2) return false;
  const auto flags = static_cast<uint8_t>(device[0]);
  const auto family = static_cast<uint8_t>(device[1]);
  if (family != AF_INET && family != AF_INET6) return false;
  const size_t ip = (flags & kLoopback) ? kLocalIds : family == AF_INET ? 4 : 16;
  return device.size() == 2 + ip;
}

// A POSIX interface address starts with its FIFO's segment id, whose top bits say how to
// open it (procfs link, shm_open, a file in a directory that follows): UCX 1.13 asserts
// on a combination it did not write.
constexpr uint64_t kPosixSegmentFlags = uint64_t{0xf} << 60;
std::optional<uint64_t> posix_segment_flags(const UcxAddressEntry& e) {
  if (e.tl_checksum != transport_checksum("posix") || e.interface.size() < 8) return {};
  uint64_t id = 0;
  std::memcpy(&id, e.interface.data(), 8);
  return id & kPosixSegmentFlags;
}

template <typename T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

void learn_transports(std::string_view address, UcxWireShape& s) {
  auto walked = parse_worker_address(address);
  if (!walked) return;
  for (const UcxAddressEntry& e : walked->entries) {
    auto it = std::find_if(s.transports.begin(), s.transports.end(),
                           [&](const auto& t) { return t.checksum == e.tl_checksum; });
    if (it == s.transports.end()) {
      it = s.transports.insert(it, UcxTransportShape{});
      it->checksum = e.tl_checksum;
    }
    if (!contains(it->device_sizes, e.device.size())) it->device_sizes.push_back(e.device.size());
    if (!contains(it->interface_sizes, e.interface.size())) {
      it->interface_sizes.push_back(e.interface.size());
    }
    if (is_shared_memory(e.tl_checksum) && !e.device.empty()) s.machine = e.device;
    if (auto flags = posix_segment_flags(e)) s.posix_segment_flags = flags;
  }
  s.address_walks = true;
}

// Refuses an interface of a transport this UCX has, with addresses of sizes it never
// writes for it.
Status check_entry(const std::string& agent, const UcxAddressEntry& e, const UcxWireShape& ours) {
  auto it = std::find_if(ours.transports.begin(), ours.transports.end(),
                         [&](const auto& t) { return t.checksum == e.tl_checksum; });
  if (it == ours.transports.end()) return {};
  const bool tcp = e.tl_checksum == transport_checksum("tcp");
  const bool device_fits =
      tcp ? tcp_device_fits(e.device) : contains(it->device_sizes, e.device.size());
  if (!device_fits || !contains(it->interface_sizes, e.interface.size())) {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "' sent a UCX worker address whose transport ", kvbm::detail::hex(e.tl_checksum),
               " has a device address of ", e.device.size(), " bytes and an interface address of ",
               e.interface.size(), " bytes; this UCX writes other sizes for it");
  }
  const auto flags = posix_segment_flags(e);
  if (flags && flags != ours.posix_segment_flags) {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "' sent a UCX worker address whose POSIX shared-memory segment is opened in "
               "another way (flags ",
               kvbm::detail::hex(*flags >> 60), "; this UCX writes ",
               kvbm::detail::hex(ours.posix_segment_flags.value_or(0) >> 60), ")");
  }
  return {};
}

}  // namespace

std::string ucx_transport_line() {
  unsigned major = 0, minor = 0, release = 0;
  ucp_get_version(&major, &minor, &release);
  return std::string(kFormat) + version_string(major, minor, release);
}

Status check_transport_line(const std::string& agent, std::string_view line) {
  if (line.size() > 64 || line.substr(0, 9) != "kvbm-ucx ") {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "' sent UCX connection data without its 'kvbm-ucx' transport line");
  }
  if (line.substr(0, kFormat.size()) != kFormat) {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "' sent UCX connection data of another format: '", line, "'; this agent reads '",
               kFormat, "<version>'");
  }
  const std::string_view theirs = line.substr(kFormat.size());
  unsigned major = 0, minor = 0, release = 0;
  ucp_get_version(&major, &minor, &release);
  const std::string ours = version_string(major, minor, release);
  // Wire layouts may change between minor versions of UCX; releases keep them.
  const std::string prefix = std::to_string(major) + "." + std::to_string(minor) + ".";
  const bool digits = theirs.size() > prefix.size() &&
                      theirs.find_first_not_of("0123456789", prefix.size()) == std::string::npos;
  if (theirs.substr(0, prefix.size()) != prefix || !digits) {
    return err(ErrorCode::Unsupported, "agent '", agent, "' runs UCX ", theirs, ", this agent UCX ",
               ours, ": their wire formats may differ, so it is refused");
  }
  return {};
}

UcxWireShape learn_wire_shape(std::string_view address, std::string_view rkey) {
  UcxWireShape s;
  s.address_header = address.empty() ? 0 : static_cast<uint8_t>(address[0]);
  s.address_len = address.size();
  s.md_key_size.fill(-1);
  learn_transports(address, s);
  if (rkey.size() < kKeyHeader) return s;
  std::memcpy(&s.md_map, rkey.data(), sizeof s.md_map);
  size_t at = kKeyHeader;
  for (uint64_t map = s.md_map; map != 0; map &= map - 1) {
    if (at >= rkey.size()) break;
    const uint8_t size = static_cast<uint8_t>(rkey[at]);
    s.md_key_size[std::countr_zero(map)] = size;
    at += 1 + size;
  }
  return s;
}

Result<UcxPeerAddress> check_worker_address(const std::string& agent, std::string_view address,
                                            const UcxWireShape& ours) {
  if (address.size() < kMinAddress || address.size() > kMaxAddress) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "' sent a UCX worker address of ",
               address.size(), " bytes; expected ", kMinAddress, " to ", kMaxAddress);
  }
  const auto header = static_cast<uint8_t>(address[0]);
  if (header != ours.address_header) {
    return err(ErrorCode::InvalidArgument, "agent '", agent,
               "' sent a UCX worker address with header ", int{header}, "; this UCX writes ",
               int{ours.address_header}, " (another address version, or other UCX settings)");
  }
  UcxPeerAddress peer;
  if (!ours.address_walks) return peer;
  auto walked = parse_worker_address(address);
  if (!walked) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "' sent a malformed ",
               walked.error().message);
  }
  for (const UcxAddressEntry& e : walked->entries) {
    KVBM_TRY(check_entry(agent, e, ours));
    if (is_shared_memory(e.tl_checksum) && !ours.machine.empty() && e.device == ours.machine) {
      peer.same_machine = true;
    }
  }
  return peer;
}

Status check_packed_rkey(std::string_view rkey, const UcxWireShape& ours) {
  if (rkey.size() < kKeyHeader || rkey.size() > kKeyHeader + 64 * 256) {
    return err(ErrorCode::InvalidArgument, "UCX remote key of ", rkey.size(), " bytes");
  }
  uint64_t md_map = 0;
  std::memcpy(&md_map, rkey.data(), sizeof md_map);
  if (md_map == 0 || (md_map & ~ours.md_map) != 0) {
    return err(ErrorCode::InvalidArgument, "UCX remote key names memory domains ",
               kvbm::detail::hex(md_map), "; this UCX packs host memory for ",
               kvbm::detail::hex(ours.md_map));
  }
  if (static_cast<uint8_t>(rkey[sizeof md_map]) != kHostMemory) {
    return err(ErrorCode::InvalidArgument, "UCX remote key of memory type ",
               int{static_cast<uint8_t>(rkey[sizeof md_map])}, ", not host memory");
  }
  size_t at = kKeyHeader;
  for (uint64_t map = md_map; map != 0; map &= map - 1) {
    const int md = std::countr_zero(map);
    if (at >= rkey.size()) {
      return err(ErrorCode::InvalidArgument, "UCX remote key cut short at memory domain ", md);
    }
    const uint8_t size = static_cast<uint8_t>(rkey[at]);
    if (size != ours.md_key_size[md] || rkey.size() - at - 1 < size) {
      return err(ErrorCode::InvalidArgument, "UCX remote key: memory domain ", md, " key of ",
                 int{size}, " bytes (", rkey.size() - at - 1, " left); this UCX packs ",
                 ours.md_key_size[md]);
    }
    at += 1 + size;
  }
  if (at != rkey.size()) {
    return err(ErrorCode::InvalidArgument, "UCX remote key has ", rkey.size() - at,
               " bytes after its last memory domain");
  }
  return {};
}

}  // namespace kvbm::xfer::detail
