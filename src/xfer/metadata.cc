// Agent metadata <-> its sealed wire form (metadata.h): the envelope, then the protobuf
// payload (metadata.proto). Decoding treats the bytes as hostile: size-checked, the
// envelope's checksum and MAC verified before parsing, then every field validated before
// anything is copied out, each failure an InvalidArgument that names the offending value.
#include "xfer/metadata.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <limits>

#include "xfer/auth.h"
#include "xfer/metadata.pb.h"  // generated into the build dir

namespace kvbm::xfer::detail {
namespace {

constexpr size_t kMaxNameBytes = 256;
constexpr size_t kMaxRegions = 1'000'000;
constexpr size_t kMaxBackendFieldBytes = size_t{1} << 20;  // a backend name, a remote_info

constexpr char kEnvelopeMagic[4] = {'K', 'V', 'M', 'D'};
constexpr uint8_t kEnvelopeVersion = 1;
constexpr uint8_t kFlagMac = 1;
constexpr size_t kEnvelopeHeaderBytes = 16;
constexpr std::string_view kMacContext = "kvbm metadata";

// A name from the wire, fit for an error message: quoted, non-printable bytes escaped,
// long ones cut (they may be up to a MiB of anything).
std::string quoted_name(std::string_view s) {
  constexpr size_t kShown = 64;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  out += "'";
  if (s.size() > kShown) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

wire::MemType to_wire(MemType type) {
  switch (type) {
    case MemType::Dram:
      return wire::MEM_DRAM;
    case MemType::Vram:
      return wire::MEM_VRAM;
    case MemType::File:
      return wire::MEM_FILE;
    case MemType::Unknown:
      return wire::MEM_UNKNOWN;
  }
  // An out-of-range value goes out as it is; every decoder rejects it.
  return static_cast<wire::MemType>(type);
}

// proto3 enums are open: the parser keeps any number, so the range is checked here.
bool from_wire(int type, MemType* out) {
  switch (type) {
    case wire::MEM_DRAM:
      *out = MemType::Dram;
      return true;
    case wire::MEM_VRAM:
      *out = MemType::Vram;
      return true;
    case wire::MEM_FILE:
      *out = MemType::File;
      return true;
    case wire::MEM_UNKNOWN:
      *out = MemType::Unknown;
      return true;
    default:
      return false;
  }
}

}  // namespace

std::string encode_metadata_payload(const AgentMetadata& metadata) {
  wire::AgentMetadata w;
  w.set_version(metadata.partial ? AgentMetadata::kPartialVersion : AgentMetadata::kVersion);
  w.set_name(metadata.name);
  w.set_incarnation(metadata.incarnation);
  for (const auto& [name, data] : metadata.backends) (*w.mutable_backends())[name] = data;
  w.mutable_regions()->Reserve(static_cast<int>(metadata.regions.size()));
  for (const auto& r : metadata.regions) {
    auto* out = w.add_regions();
    out->set_type(to_wire(r.type));
    out->set_addr(r.desc.addr);
    out->set_len(r.desc.len);
    out->set_dev_id(r.desc.dev_id);
    for (const auto& [backend, info] : r.remote_info) (*out->mutable_remote_info())[backend] = info;
  }
  // Deterministic, so equal metadata always gives equal bytes (maps otherwise go out in
  // hash order). A message over protobuf's 2 GiB limit cannot be written: it comes out
  // empty, which no decoder accepts (version 0).
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!w.SerializeToCodedStream(&coded)) bytes.clear();
  }
  return bytes;
}

std::string encode_metadata(const AgentMetadata& metadata, std::string_view auth_key) {
  return seal_metadata(encode_metadata_payload(metadata), auth_key);
}

std::string seal_metadata(std::string_view payload, std::string_view auth_key) {
  std::string out(kEnvelopeHeaderBytes, '\0');
  std::memcpy(out.data(), kEnvelopeMagic, 4);
  out[4] = static_cast<char>(kEnvelopeVersion);
  out[5] = static_cast<char>(auth_key.empty() ? 0 : kFlagMac);
  for (int i = 0; i < 8; ++i) out[8 + i] = static_cast<char>((payload.size() >> (8 * i)) & 0xff);
  out.reserve(out.size() + payload.size() + 2 * sizeof(Digest));
  out.append(payload);
  const Digest sum = sha256(out);
  out.append(as_view(sum));
  if (!auth_key.empty()) {
    const Digest mac = hmac_sha256(
        auth_key,
        {kMacContext, std::string_view(out).substr(0, kEnvelopeHeaderBytes), as_view(sum)});
    out.append(as_view(mac));
  }
  return out;
}

Result<std::string_view> open_metadata(std::string_view bytes, size_t max_bytes,
                                       std::string_view auth_key) {
  if (bytes.size() > max_bytes) {
    return err(ErrorCode::InvalidArgument, "metadata of ", bytes.size(),
               " bytes exceeds the limit of ", max_bytes, " bytes");
  }
  if (bytes.size() < kEnvelopeHeaderBytes) {
    return err(ErrorCode::InvalidArgument, "metadata of ", bytes.size(),
               " bytes is shorter than its ", kEnvelopeHeaderBytes, "-byte envelope header");
  }
  if (std::memcmp(bytes.data(), kEnvelopeMagic, 4) != 0) {
    return err(ErrorCode::InvalidArgument, "metadata envelope magic ",
               quoted_name(bytes.substr(0, 4)),
               " is not 'KVMD' (not kvbm metadata, or from a kvbm without the envelope)");
  }
  const auto version = static_cast<uint8_t>(bytes[4]);
  const auto flags = static_cast<uint8_t>(bytes[5]);
  if (version != kEnvelopeVersion) {
    return err(ErrorCode::InvalidArgument, "metadata envelope version ", int{version},
               " is not supported (", int{kEnvelopeVersion}, " is)");
  }
  if ((flags & ~kFlagMac) != 0 || bytes[6] != 0 || bytes[7] != 0) {
    return err(ErrorCode::InvalidArgument, "metadata envelope has unknown flags ", int{flags},
               " or nonzero reserved bytes");
  }
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= uint64_t{static_cast<uint8_t>(bytes[8 + i])} << (8 * i);
  const bool has_mac = (flags & kFlagMac) != 0;
  const size_t trailer = sizeof(Digest) * (has_mac ? 2 : 1);
  const size_t body = bytes.size() - kEnvelopeHeaderBytes;
  if (body < trailer || len != body - trailer) {
    return err(ErrorCode::InvalidArgument, "metadata envelope declares a payload of ", len,
               " bytes, but ", body, " bytes follow its header (payload + ", trailer,
               " bytes of checksum", has_mac ? " and MAC" : "", " expected)");
  }
  const std::string_view covered = bytes.substr(0, kEnvelopeHeaderBytes + len);
  const Digest sum = sha256(covered);
  const auto* stored = reinterpret_cast<const uint8_t*>(bytes.data() + covered.size());
  if (!digests_equal(sum.data(), stored)) {
    return err(ErrorCode::InvalidArgument, "metadata checksum mismatch: the ", bytes.size(),
               "-byte blob is corrupt (SHA-256 over its ", len, "-byte payload differs)");
  }
  if (!auth_key.empty()) {
    if (!has_mac) {
      return err(ErrorCode::InvalidArgument,
                 "metadata is not authenticated; this agent has an auth key and loads only "
                 "metadata sealed with it (is the peer configured with the key?)");
    }
    const Digest mac =
        hmac_sha256(auth_key, {kMacContext, bytes.substr(0, kEnvelopeHeaderBytes), as_view(sum)});
    if (!digests_equal(mac.data(), stored + sizeof(Digest))) {
      return err(ErrorCode::InvalidArgument,
                 "metadata authentication failed: its MAC does not match this agent's key");
    }
  }
  return bytes.substr(kEnvelopeHeaderBytes, len);
}

Result<AgentMetadata> decode_metadata(std::string_view bytes, size_t max_bytes,
                                      std::string_view auth_key) {
  auto payload = open_metadata(bytes, max_bytes, auth_key);
  if (!payload) return payload.error();
  return decode_metadata_payload(*payload);
}

namespace {

// Region `i` of `w`, checked: a known memory type, a nonempty range that does not wrap, and
// remote_info only of backends the metadata lists (or, in regions-only partial metadata,
// of the loaded peer's, checked later), within the field limits.
Result<RegionMetadata> region_from_wire(const wire::AgentMetadata& w, int i, bool partial) {
  const auto& r = w.regions(i);
  RegionMetadata region;
  if (!from_wire(static_cast<int>(r.type()), &region.type)) {
    return err(ErrorCode::InvalidArgument, "metadata region ", i, ": unknown memory type ",
               static_cast<int>(r.type()));
  }
  if (r.len() == 0) {
    return err(ErrorCode::InvalidArgument, "metadata region ", i, ": empty (addr ", r.addr(),
               ", len 0)");
  }
  // The end (addr + len, exclusive) must itself be a representable address.
  if (r.len() > std::numeric_limits<uint64_t>::max() - r.addr()) {
    return err(ErrorCode::InvalidArgument, "metadata region ", i, ": addr ", r.addr(), " + len ",
               r.len(), " overflows");
  }
  region.desc = {r.addr(), r.len(), r.dev_id()};
  for (const auto& [backend, info] : r.remote_info()) {
    // Regions sent without connection data are checked against the loaded peer's.
    if (backend.size() > kMaxBackendFieldBytes) {
      return err(ErrorCode::InvalidArgument, "metadata region ", i, ": backend name ",
                 quoted_name(backend), " exceeds ", kMaxBackendFieldBytes, " bytes");
    }
    const bool regions_only = partial && w.backends().empty();
    if (!regions_only && w.backends().find(backend) == w.backends().end()) {
      return err(ErrorCode::InvalidArgument, "metadata region ", i, ": remote_info names backend ",
                 quoted_name(backend), ", which the metadata does not list");
    }
    if (info.size() > kMaxBackendFieldBytes) {
      return err(ErrorCode::InvalidArgument, "metadata region ", i, ": remote_info of backend ",
                 quoted_name(backend), " is ", info.size(), " bytes, over the limit of ",
                 kMaxBackendFieldBytes);
    }
    region.remote_info.emplace(backend, info);
  }
  return region;
}

}  // namespace

Result<AgentMetadata> decode_metadata_payload(std::string_view bytes) {
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return err(ErrorCode::InvalidArgument, "metadata of ", bytes.size(),
               " bytes exceeds protobuf's limit of ", INT_MAX, " bytes");
  }
  wire::AgentMetadata w;
  if (!w.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return err(ErrorCode::InvalidArgument, "metadata: ", bytes.size(),
               " bytes do not parse as kvbm.wire.AgentMetadata");
  }

  if (w.version() != AgentMetadata::kVersion && w.version() != AgentMetadata::kPartialVersion) {
    return err(ErrorCode::InvalidArgument, "metadata version ", w.version(), " is not supported (",
               AgentMetadata::kVersion, " and ", AgentMetadata::kPartialVersion, " (partial) are)");
  }
  const bool partial = w.version() == AgentMetadata::kPartialVersion;
  if (partial && w.backends().empty() && w.regions().empty()) {
    return err(ErrorCode::InvalidArgument,
               "partial metadata carries neither connection data nor regions");
  }
  if (w.name().empty()) return err(ErrorCode::InvalidArgument, "metadata: agent name is empty");
  if (w.name().size() > kMaxNameBytes) {
    return err(ErrorCode::InvalidArgument, "metadata: agent name ", quoted_name(w.name()), " of ",
               w.name().size(), " bytes exceeds ", kMaxNameBytes, " bytes");
  }
  for (const auto& [backend, data] : w.backends()) {
    if (backend.size() > kMaxBackendFieldBytes) {
      return err(ErrorCode::InvalidArgument, "metadata: backend name ", quoted_name(backend),
                 " exceeds ", kMaxBackendFieldBytes, " bytes");
    }
  }
  if (static_cast<size_t>(w.regions_size()) > kMaxRegions) {
    return err(ErrorCode::InvalidArgument, "metadata: ", w.regions_size(),
               " regions exceed the limit of ", kMaxRegions);
  }

  AgentMetadata m;
  m.name = w.name();
  m.partial = partial;
  m.incarnation = w.incarnation();
  for (const auto& [backend, data] : w.backends()) m.backends.emplace(backend, data);
  m.regions.reserve(static_cast<size_t>(w.regions_size()));
  for (int i = 0; i < w.regions_size(); ++i) {
    auto region = region_from_wire(w, i, partial);
    if (!region) return region.error();
    m.regions.push_back(std::move(*region));
  }
  return m;
}

}  // namespace kvbm::xfer::detail
