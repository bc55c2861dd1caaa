#include "xfer/backends/ucx/peer_check.h"

#include <ucp/api/ucp.h>

#include <bit>
#include <cstring>

#include "common/hex.h"

namespace kvbm::xfer::detail {
namespace {

constexpr std::string_view kFormat = "kvbm-ucx 1 ucx ";
// A worker address lists devices and transports; UCX's own stay well inside this.
constexpr size_t kMinAddress = 16;
constexpr size_t kMaxAddress = 64 << 10;
// UCX 1.x packs a key as [md map: u64][memory type: u8] then per memory domain [size: u8][bytes].
constexpr size_t kKeyHeader = sizeof(uint64_t) + 1;
constexpr uint8_t kHostMemory = 0;  // UCS_MEMORY_TYPE_HOST

std::string version_string(unsigned major, unsigned minor, unsigned release) {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
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

Status check_worker_address(const std::string& agent, std::string_view address,
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
  return {};
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
