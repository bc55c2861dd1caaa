// The CUDA backend's regions: local VRAM (checked against its allocation, published with
// an IPC handle where CUDA gives one) and DRAM; peers' regions (IPC data decoded).
#include <cstring>

#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {
namespace {

// Whether [addr, addr + len) is pinned host memory that a kernel can address as it is
// (mapped, at the same address on the device: cudaHostAlloc'd, or registered and the
// device can use host pointers). Pageable memory is not: the kernel path skips it.
bool host_mapped(uint64_t addr, uint64_t len) {
  for (uint64_t at : {addr, addr + len - 1}) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, reinterpret_cast<void*>(at)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (a.type != cudaMemoryTypeHost || a.devicePointer != reinterpret_cast<void*>(at)) {
      return false;
    }
  }
  return true;
}

}  // namespace

CudaLocalRegion::~CudaLocalRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  auto it = backend->locals_.find({type, desc.dev_id, desc.addr});
  if (it == backend->locals_.end()) return;
  std::erase(it->second, this);
  if (it->second.empty()) backend->locals_.erase(it);
}

CudaRemoteRegion::~CudaRemoteRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  backend->unmap_locked(*this);
  peer->regions.erase(this);
}

Result<std::unique_ptr<LocalRegion>> CudaBackend::register_region(MemType type,
                                                                  const Desc& region) {
  if (type != MemType::Vram && type != MemType::Dram) {
    return err(ErrorCode::Unsupported, "CUDA registers VRAM and DRAM, not ", to_string(type));
  }
  std::string info;
  if (type == MemType::Vram) {
    if (region.dev_id > 1024) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr),
                 " names device ordinal ", region.dev_id);
    }
    const int dev = static_cast<int>(region.dev_id);
    KVBM_TRY(::kvbm::detail::check_device(dev));
    void* ptr = reinterpret_cast<void*>(region.addr);
    cudaPointerAttributes a{};
    if (cudaError_t e = cudaPointerGetAttributes(&a, ptr); e != cudaSuccess) {
      return cuda_fail(
          ErrorCode::InvalidArgument, e,
          "VRAM region at " + hex(region.addr) + " is not device memory: cudaPointerGetAttributes");
    }
    if (a.type != cudaMemoryTypeDevice) {
      const char* what = a.type == cudaMemoryTypeHost      ? "pinned host memory"
                         : a.type == cudaMemoryTypeManaged ? "managed memory"
                                                           : "not CUDA memory (host or freed)";
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr), " of ",
                 region.len, " bytes is ", what, ", not device memory");
    }
    if (a.device != dev) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr),
                 " lives on device ", a.device, ", not on device ", dev, " as its descriptor says");
    }
    CudaRegionInfo ri;
    ri.alloc_base = region.addr;
    ri.alloc_size = region.len;
    ri.device = dev;
    ri.pid = getpid();
    ri.boot_id = host_;
    if (auto range = address_range_fn()) {
      CUdeviceptr base = 0;
      size_t size = 0;
      DeviceGuard g(dev);
      if (range(&base, &size, static_cast<CUdeviceptr>(region.addr)) == CUDA_SUCCESS) {
        ri.alloc_base = base;
        ri.alloc_size = size;
      }
    }
    if (region.addr + region.len > ri.alloc_base + ri.alloc_size) {
      return err(ErrorCode::InvalidArgument, "VRAM region at ", hex(region.addr), " of ",
                 region.len, " bytes extends past its allocation (", hex(ri.alloc_base), ", ",
                 ri.alloc_size, " bytes)");
    }
    cudaIpcMemHandle_t h{};
    DeviceGuard g(dev);
    if (cudaError_t e = cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(ri.alloc_base));
        e == cudaSuccess) {
      std::memcpy(ri.handle.data(), &h, sizeof h);
      info = ri.encode();
    } else {
      // E.g. memory from cudaMallocAsync pools: reachable locally and over the staged path.
      cudaGetLastError();
      log(LogLevel::Debug,
          "CUDA: no IPC handle for VRAM at " + hex(region.addr) + ": " + cudaGetErrorString(e));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto r = std::make_unique<CudaLocalRegion>(this, type, region, std::move(info));
  if (type == MemType::Dram) r->mapped = host_mapped(region.addr, region.len);
  locals_[{type, region.dev_id, region.addr}].push_back(r.get());
  return std::unique_ptr<LocalRegion>(std::move(r));
}

bool CudaBackend::local_range_ok(MemType type, uint64_t dev, uint64_t addr, uint64_t len) const {
  if (len == 0 || addr + len < addr) return false;
  auto it = locals_.upper_bound({type, dev, addr});
  if (it == locals_.begin()) return false;
  --it;
  const auto& [t, d, a] = it->first;
  if (t != type || d != dev) return false;
  for (const CudaLocalRegion* r : it->second) {
    if (addr >= r->desc.addr && len <= r->desc.len && addr - r->desc.addr <= r->desc.len - len)
      return true;
  }
  return false;
}

Result<std::unique_ptr<RemoteRegion>> CudaBackend::load_remote_region(const std::string& agent,
                                                                      MemType type,
                                                                      const Desc& region,
                                                                      std::string_view info) {
  if (type != MemType::Vram && type != MemType::Dram) {
    return err(ErrorCode::Unsupported, "CUDA reaches VRAM and DRAM, not ", to_string(type));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "CUDA is not connected to agent '", agent, "'");
  auto r = std::make_unique<CudaRemoteRegion>(this, it->second, type, region);
  if (type == MemType::Dram && it->second->mode == Mode::Self) {
    r->host_mapped = host_mapped(region.addr, region.len);
  }
  if (type == MemType::Vram && !info.empty() && it->second->mode != Mode::Self) {
    auto ri = CudaRegionInfo::decode(info, region.addr, region.len);
    if (!ri) return ri.error();
    if (it->second->mode == Mode::Ipc) {
      r->key.assign(ri->handle.data(), ri->handle.size());
      r->ipc = std::move(*ri);
    }
  }
  it->second->regions.insert(r.get());
  return std::unique_ptr<RemoteRegion>(std::move(r));
}

}  // namespace kvbm::xfer::detail::cuda
