#include "demo_blocks.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/pattern.h"
#include "kvbm/storage.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools::demo {
namespace {

bool is_host(StorageKind k) {
  return k == StorageKind::System || k == StorageKind::Pinned;
}

#if KVBM_HAVE_CUDA
Status cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return {};
  return err(ErrorCode::Internal, what, ": ", cudaGetErrorString(e));
}
#endif

// The bytes of region `r`: in place for host memory, otherwise read into `staging`.
Result<const char*> region_bytes(const Storage& s, SystemStorage* staging) {
  const StorageKind kind = s.type().kind;
  if (is_host(kind)) return static_cast<const char*>(s.data());
  auto* out = static_cast<char*>(staging->data());
  if (kind == StorageKind::Disk) {
    const int fd = static_cast<int>(s.type().id);
    for (size_t done = 0; done < s.size();) {
      ssize_t n = pread(fd, out + done, s.size() - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return err(ErrorCode::Io, "pread of fd ", fd, " at offset ", done, ": ",
                   n == 0 ? "end of file" : std::strerror(errno));
      }
      done += static_cast<size_t>(n);
    }
    return static_cast<const char*>(out);
  }
  if (kind == StorageKind::Device) {
#if KVBM_HAVE_CUDA
    KVBM_TRY(cuda(
        cudaMemcpy(out, reinterpret_cast<const void*>(s.addr()), s.size(), cudaMemcpyDeviceToHost),
        "cudaMemcpy device to host"));
    return static_cast<const char*>(out);
#else
    return err(ErrorCode::DeviceUnavailable, "kvbm was built without CUDA");
#endif
  }
  return err(ErrorCode::InvalidArgument, "cannot read a ", s.type().to_string(), " region");
}

}  // namespace

LayoutConfig block_config(size_t num_blocks) {
  LayoutConfig c;
  c.num_blocks = num_blocks;
  c.num_layers = 2;
  c.outer_dim = 2;
  c.page_size = 16;
  c.inner_dim = 2048;
  c.dtype_bytes = 2;
  c.alignment = 4096;
  return c;
}

size_t block_bytes() {
  const LayoutConfig c = block_config(1);
  return c.num_layers * c.outer_dim * c.chunk_bytes();
}

uint64_t chunk_seed(uint64_t seed, size_t block, size_t layer, size_t outer) {
  return seed * 1000003 + (block * 4096 + layer) * 2 + outer;
}

Status fill_blocks(Layout& host, uint64_t seed) {
  if (!is_host(host.storage_type().kind)) {
    return err(ErrorCode::InvalidArgument, "fill_blocks needs host memory, not ",
               host.storage_type().to_string());
  }
  const LayoutConfig& c = host.config();
  for (size_t b = 0; b < c.num_blocks; ++b)
    for (size_t l = 0; l < c.num_layers; ++l)
      for (size_t o = 0; o < c.outer_dim; ++o) {
        const MemoryRegion m = host.memory_region_unchecked(b, l, o);
        detail::fill_pattern(static_cast<char*>(host.region(m.region).data()) + m.offset, m.size,
                             chunk_seed(seed, b, l, o));
      }
  return {};
}

Result<std::string> check_blocks(const Layout& layout, uint64_t seed,
                                 const std::function<size_t(size_t)>& src_of) {
  const LayoutConfig& c = layout.config();
  std::optional<SystemStorage> staging;
  for (size_t r = 0; r < layout.num_regions(); ++r) {
    const Storage& s = layout.region(r);
    if (!is_host(s.type().kind) && (!staging || staging->size() < s.size())) {
      auto made = SystemAllocator().allocate(s.size());
      if (!made) return made.error();
      staging = std::move(*made);
    }
    auto bytes = region_bytes(s, staging ? &*staging : nullptr);
    if (!bytes) return bytes.error();
    for (size_t b = 0; b < c.num_blocks; ++b)
      for (size_t l = 0; l < c.num_layers; ++l)
        for (size_t o = 0; o < c.outer_dim; ++o) {
          const MemoryRegion m = layout.memory_region_unchecked(b, l, o);
          if (m.region != r) continue;
          const size_t at = detail::find_pattern_mismatch(*bytes + m.offset, m.size,
                                                          chunk_seed(seed, src_of(b), l, o));
          if (at != SIZE_MAX) {
            return "CORRUPT block " + std::to_string(b) + " (layer " + std::to_string(l) + ", " +
                   (o == 0 ? "K" : "V") + ", byte " + std::to_string(at) + ")";
          }
        }
  }
  return std::string("ok");
}

Status copy_to_device(Storage& device, const void* host) {
#if KVBM_HAVE_CUDA
  return cuda(cudaMemcpy(reinterpret_cast<void*>(device.addr()), host, device.size(),
                         cudaMemcpyHostToDevice),
              "cudaMemcpy host to device");
#else
  (void)device;
  (void)host;
  return err(ErrorCode::DeviceUnavailable, "kvbm was built without CUDA");
#endif
}

Status zero_region(Storage& region) {
  const StorageKind kind = region.type().kind;
  if (is_host(kind)) {
    std::memset(region.data(), 0, region.size());
    return {};
  }
  if (kind == StorageKind::Device) {
#if KVBM_HAVE_CUDA
    return cuda(cudaMemset(reinterpret_cast<void*>(region.addr()), 0, region.size()), "cudaMemset");
#else
    return err(ErrorCode::DeviceUnavailable, "kvbm was built without CUDA");
#endif
  }
  return err(ErrorCode::InvalidArgument, "cannot zero a ", region.type().to_string(), " region");
}

std::string to_hex(std::string_view bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

}  // namespace kvbm::tools::demo
