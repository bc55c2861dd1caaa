#include "xfer/backends/cuda/cuda_info.h"

#include <cstring>

namespace kvbm::xfer::detail {
namespace {

constexpr uint32_t kCudaConnMagic = 0x4b564343;    // "KVCC"
constexpr uint32_t kCudaRegionMagic = 0x4b564352;  // "KVCR"
constexpr uint32_t kCudaInfoVersion = 1;
constexpr size_t kMaxBootId = 64;
constexpr size_t kMaxAddress = 64 << 10;

// A little-endian writer and a bounds-checked reader: enough for fixed records.
struct RecordWriter {
  std::string out;
  template <typename T>
  void put(T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_bytes(std::string_view s) {
    put(static_cast<uint32_t>(s.size()));
    out.append(s);
  }
};

struct RecordReader {
  std::string_view in;
  bool ok = true;
  template <typename T>
  T get() {
    T v{};
    if (in.size() < sizeof v) {
      ok = false;
      return v;
    }
    std::memcpy(&v, in.data(), sizeof v);
    in.remove_prefix(sizeof v);
    return v;
  }
  std::string get_bytes(size_t max) {
    const uint32_t n = get<uint32_t>();
    if (!ok || n > max || n > in.size()) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};

}  // namespace

std::string CudaConnectionInfo::encode() const {
  RecordWriter w;
  w.put(kCudaConnMagic);
  w.put(kCudaInfoVersion);
  w.put(pid);
  w.put_bytes(boot_id);
  w.put_bytes(ucx_address);
  w.put(chunk_bytes);
  return w.out;
}

Result<CudaConnectionInfo> CudaConnectionInfo::decode(std::string_view bytes) {
  RecordReader r{bytes};
  const auto magic = r.get<uint32_t>();
  const auto version = r.get<uint32_t>();
  if (!r.ok || magic != kCudaConnMagic) {
    return err(ErrorCode::InvalidArgument, "malformed CUDA connection data (", bytes.size(),
               " bytes)");
  }
  if (version != kCudaInfoVersion) {
    return err(ErrorCode::InvalidArgument, "CUDA connection data version ", version,
               " is not supported (this build speaks ", kCudaInfoVersion, ")");
  }
  CudaConnectionInfo info;
  info.pid = r.get<int64_t>();
  info.boot_id = r.get_bytes(kMaxBootId);
  info.ucx_address = r.get_bytes(kMaxAddress);
  info.chunk_bytes = r.get<uint64_t>();
  if (!r.ok || !r.in.empty() || info.boot_id.empty() ||
      (!info.ucx_address.empty() && info.chunk_bytes == 0)) {
    return err(ErrorCode::InvalidArgument, "malformed CUDA connection data (", bytes.size(),
               " bytes)");
  }
  return info;
}

std::string CudaRegionInfo::encode() const {
  RecordWriter w;
  w.put(kCudaRegionMagic);
  w.put(kCudaInfoVersion);
  w.out.append(handle.data(), handle.size());
  w.put(alloc_base);
  w.put(alloc_size);
  w.put(device);
  w.put(pid);
  w.put_bytes(boot_id);
  return w.out;
}

Result<CudaRegionInfo> CudaRegionInfo::decode(std::string_view bytes, uint64_t addr, uint64_t len) {
  RecordReader r{bytes};
  const auto magic = r.get<uint32_t>();
  const auto version = r.get<uint32_t>();
  if (!r.ok || magic != kCudaRegionMagic) {
    return err(ErrorCode::InvalidArgument, "malformed CUDA region info (", bytes.size(), " bytes)");
  }
  if (version != kCudaInfoVersion) {
    return err(ErrorCode::InvalidArgument, "CUDA region info version ", version,
               " is not supported");
  }
  CudaRegionInfo info;
  if (r.in.size() < kHandleBytes) {
    return err(ErrorCode::InvalidArgument, "CUDA region info too short for an IPC handle");
  }
  std::memcpy(info.handle.data(), r.in.data(), kHandleBytes);
  r.in.remove_prefix(kHandleBytes);
  info.alloc_base = r.get<uint64_t>();
  info.alloc_size = r.get<uint64_t>();
  info.device = r.get<int32_t>();
  info.pid = r.get<int64_t>();
  info.boot_id = r.get_bytes(kMaxBootId);
  if (!r.ok || !r.in.empty()) {
    return err(ErrorCode::InvalidArgument, "malformed CUDA region info (", bytes.size(), " bytes)");
  }
  if (info.device < 0) {
    return err(ErrorCode::InvalidArgument, "CUDA region info names device ", info.device);
  }
  const bool inside = addr >= info.alloc_base && len <= info.alloc_size &&
                      addr - info.alloc_base <= info.alloc_size - len;
  if (!inside) {
    return err(ErrorCode::InvalidArgument, "region at ", addr, " of ", len,
               " bytes lies outside its published allocation (base ", info.alloc_base, ", ",
               info.alloc_size, " bytes)");
  }
  return info;
}

}  // namespace kvbm::xfer::detail
