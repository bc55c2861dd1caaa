// Peers' VRAM through CUDA IPC: each allocation opened once per peer, shared by the
// regions in it (reference counted), closed with the last of them or the peer.
#include <cstring>

#include "xfer/backends/cuda/cuda_backend_impl.h"

namespace kvbm::xfer::detail::cuda {

void CudaBackend::unmap_locked(CudaRemoteRegion& r) {
  if (r.mapped == nullptr) return;
  r.mapped = nullptr;
  auto it = r.peer->mappings.find(r.key);
  if (it == r.peer->mappings.end() || --it->second.refs > 0) return;
  DeviceGuard g(it->second.device);
  if (cudaError_t e = cudaIpcCloseMemHandle(it->second.base); e != cudaSuccess) {
    log(LogLevel::Error, cuda_fail(ErrorCode::Internal, e, "cudaIpcCloseMemHandle").to_string());
  }
  r.peer->mappings.erase(it);
}

Result<char*> CudaBackend::map_locked(CudaRemoteRegion& r) {
  if (r.mapped != nullptr) return r.mapped;
  IpcMapping& m = r.peer->mappings[r.key];
  if (m.refs == 0) {
    cudaIpcMemHandle_t h{};
    std::memcpy(&h, r.ipc->handle.data(), sizeof h);
    DeviceGuard g(r.ipc->device);
    void* p = nullptr;
    if (cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
        e != cudaSuccess) {
      r.peer->mappings.erase(r.key);
      return cuda_fail(ErrorCode::Remote, e,
                       "cudaIpcOpenMemHandle of agent '" + r.peer->name + "' VRAM at " +
                           hex(r.desc.addr) + " (device " + std::to_string(r.ipc->device) + ")");
    }
    m.base = static_cast<char*>(p);
    m.device = r.ipc->device;
  }
  ++m.refs;
  r.mapped = m.base;
  return r.mapped;
}

}  // namespace kvbm::xfer::detail::cuda
