#include "xfer/backends/ucx/worker_address.h"

#include <ucs/algorithm/crc.h>

#include <cmath>
#include <cstring>

namespace kvbm::xfer::detail {
namespace {

// UCX 1.13's address layout (src/ucp/wireup/address.c), as constants of this walk.
constexpr uint8_t kVersionMask = 0x0f;
constexpr uint8_t kVersion1 = 0, kVersion2 = 1;
constexpr uint8_t kHeaderDebugName = 1u << 0, kHeaderUuid = 1u << 1, kHeaderClientId = 1u << 2;
constexpr uint8_t kNoDevices = 0xff;
constexpr uint8_t kMdEmptyDevice = 0x80;
constexpr uint8_t kMdMaskV1 = 0x1f, kMdMaskV2 = 0x7f;
constexpr uint8_t kLast = 0x80;
constexpr uint8_t kDeviceNumPaths = 0x40, kDeviceSysDevice = 0x20, kDeviceLenMask = 0x1f;
constexpr uint8_t kIfaceHasEpAddress = 0x40, kIfaceLenMask = 0x3f;
constexpr size_t kAttrSizeV1 = 16;      // overhead, bandwidth, latency (floats), priority + caps
constexpr size_t kAttrSizeV2 = 8;       // three fp8 values, priority, segment size, caps
constexpr size_t kMaxInterfaces = 128;  // UCP_MAX_RESOURCES
constexpr uint32_t kMaxMdIndex = 63;    // UCP_MAX_MDS - 1: UCX keeps md indices in a 64-bit map

// Reads forward through the bytes; every read is bounds-checked and the first failure
// sticks (later reads return zeros), so the walk reads straight and checks once per step.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  size_t at() const { return at_; }
  size_t left() const { return bytes_.size() - at_; }
  bool ok() const { return ok_; }
  uint8_t peek() const { return ok_ && at_ < bytes_.size() ? uint8_t(bytes_[at_]) : 0; }
  uint8_t u8() {
    const std::string_view b = take(1);
    return b.empty() ? 0 : uint8_t(b[0]);
  }
  uint16_t u16() {
    uint16_t v = 0;
    if (auto b = take(2); !b.empty()) std::memcpy(&v, b.data(), 2);
    return v;
  }
  std::string_view take(size_t n) {
    if (!ok_ || n > left()) {
      ok_ = false;
      return {};
    }
    const std::string_view b = bytes_.substr(at_, n);
    at_ += n;
    return b;
  }
  // UCX's "byte extended": the bits under mask, or in version 2 the next byte when they
  // are all set.
  uint32_t extended(uint8_t mask, uint8_t version) {
    uint32_t v = u8() & mask;
    if (version != kVersion1 && v == mask) v = u8();
    return v;
  }

 private:
  std::string_view bytes_;
  size_t at_ = 0;
  bool ok_ = true;
};

Error malformed(const Reader& r, std::string_view what) {
  return err(ErrorCode::InvalidArgument, "UCX worker address: ", what, " at byte ", r.at());
}

// Version 1 carries overhead, bandwidth and latency as floats, from which UCX scores the
// transports (and asserts that no score is negative): each must be finite, the times not
// negative, the bandwidth positive. Version 2's 8-bit encodings are never negative.
bool attributes_fit(std::string_view attr, uint8_t version) {
  if (version != kVersion1) return true;
  float overhead = 0, bandwidth = 0, latency = 0;
  std::memcpy(&overhead, attr.data(), 4);
  std::memcpy(&bandwidth, attr.data() + 4, 4);
  std::memcpy(&latency, attr.data() + 8, 4);
  return std::isfinite(overhead) && std::isfinite(bandwidth) && std::isfinite(latency) &&
         overhead >= 0 && latency >= 0 && bandwidth > 0;
}

uint32_t caps_of(std::string_view attr, uint8_t version) {
  if (version == kVersion1) {
    uint32_t prio_caps = 0;
    std::memcpy(&prio_caps, attr.data() + 12, 4);
    return prio_caps & ~uint32_t{0xff};
  }
  uint16_t flags = 0;
  std::memcpy(&flags, attr.data() + 6, 2);
  return flags;
}

// The header: version, flags, and what the flags say follows (uuid, client id, name).
Status read_header(Reader& r, UcxWorkerAddress& out) {
  const uint8_t first = r.u8();
  out.version = first & kVersionMask;
  if (out.version == kVersion1) {
    out.flags = first >> 4;
  } else if (out.version == kVersion2) {
    out.flags = r.u8();
  } else {
    return malformed(r, "unknown address version " + std::to_string(out.version));
  }
  // A version 1 address always carries the worker's uuid (UCX unpacks it by default).
  if (out.version == kVersion1 || (out.flags & kHeaderUuid)) r.take(8);
  if (out.flags & kHeaderClientId) r.take(8);
  if (out.flags & kHeaderDebugName) r.take(r.u8());
  if (!r.ok()) return malformed(r, "header cut short");
  return {};
}

// One interface of a device: transport checksum, attributes, its address.
Status read_interface(Reader& r, const UcxWorkerAddress& a, UcxAddressEntry& e, bool* last) {
  e.tl_checksum = r.u16();
  const std::string_view attr = r.take(a.version == kVersion1 ? kAttrSizeV1 : kAttrSizeV2);
  const uint8_t flags = r.peek();
  const uint32_t len = r.extended(kIfaceLenMask, a.version);
  e.interface = r.take(len);
  if (!r.ok()) return malformed(r, "interface cut short");
  if (flags & kIfaceHasEpAddress) return malformed(r, "endpoint address in a worker address");
  if (!attributes_fit(attr, a.version)) {
    return malformed(r, "interface attributes out of range (a negative or non-finite value)");
  }
  e.caps = caps_of(attr, a.version);
  *last = (flags & kLast) != 0;
  return {};
}

// One device and its interfaces.
Status read_device(Reader& r, UcxWorkerAddress& a, bool* last_device) {
  const bool empty = (r.peek() & kMdEmptyDevice) != 0;
  const uint32_t md = r.extended(a.version == kVersion1 ? kMdMaskV1 : kMdMaskV2, a.version);
  if (md > kMaxMdIndex) return malformed(r, "memory domain index " + std::to_string(md));
  const uint8_t dev_flags = r.peek();
  const uint32_t dev_len = r.extended(kDeviceLenMask, a.version);
  if ((dev_flags & kDeviceNumPaths) && r.u8() == 0) return malformed(r, "device of 0 paths");
  if (dev_flags & kDeviceSysDevice) r.u8();
  const std::string_view device = r.take(dev_len);
  if (!r.ok()) return malformed(r, "device cut short");
  *last_device = (dev_flags & kLast) != 0;
  for (bool last = empty; !last;) {
    if (a.entries.size() == kMaxInterfaces) {
      return malformed(r, "more than " + std::to_string(kMaxInterfaces) + " interfaces");
    }
    UcxAddressEntry e;
    e.md_index = md;
    e.device = device;
    KVBM_TRY(read_interface(r, a, e, &last));
    a.entries.push_back(e);
  }
  return {};
}

}  // namespace

Result<UcxWorkerAddress> parse_worker_address(std::string_view bytes) {
  Reader r(bytes);
  UcxWorkerAddress a;
  KVBM_TRY(read_header(r, a));
  if (r.left() == 0 || r.peek() == kNoDevices) return malformed(r, "no transports listed");
  for (bool last_device = false; !last_device;) KVBM_TRY(read_device(r, a, &last_device));
  if (r.left() != 0) return malformed(r, std::to_string(r.left()) + " bytes after the last device");
  return a;
}

uint16_t transport_checksum(const char* name) {
  return ucs_crc16_string(name);
}

}  // namespace kvbm::xfer::detail
