// The CUDA backend's peers and regions: how a peer is reached (this process, CUDA IPC,
// or the staged path), its opened IPC allocations, and the regions of both sides. Guarded
// by the backend's lock. Not a public interface.
#pragma once

#include <ucp/api/ucp.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "xfer/backend.h"
#include "xfer/backends/cuda/cuda_info.h"

namespace kvbm::xfer::detail::cuda {

class CudaBackend;
class CudaCopyRequest;
class CudaRemoteRegion;

enum class Mode { Self, Ipc, Staged };

struct IpcMapping {
  char* base = nullptr;
  int device = 0;
  int refs = 0;
};

struct CudaPeer {
  std::string name;
  Mode mode = Mode::Self;
  uint64_t chunk_bytes = 0;  // staged chunks: at most what the peer's bounce buffers take
  ucp_ep_h ep = nullptr;
  uint64_t token = 0;  // this connection's, in its staged chunks and polls (staging_wire.h)
  std::optional<Error> failure;
  std::map<std::string, IpcMapping> mappings;  // opened allocations, by IPC handle bytes
  std::set<CudaRemoteRegion*> regions;
  std::set<CudaCopyRequest*> copies;  // posted copy requests, for disconnect
};

class CudaLocalRegion final : public LocalRegion {
 public:
  CudaLocalRegion(CudaBackend* b, MemType type, Desc desc, std::string info)
      : backend(b), type(type), desc(desc), info(std::move(info)) {}
  ~CudaLocalRegion() override;
  std::string remote_info() const override { return info; }

  CudaBackend* backend;
  MemType type;
  Desc desc;
  std::string info;
  bool mapped = false;  // DRAM a kernel can address as it is (pinned, mapped: host_mapped())
};

class CudaRemoteRegion final : public RemoteRegion {
 public:
  CudaRemoteRegion(CudaBackend* b, std::shared_ptr<CudaPeer> peer, MemType type, Desc desc)
      : backend(b), peer(std::move(peer)), type(type), desc(desc) {}
  ~CudaRemoteRegion() override;

  CudaBackend* backend;
  std::shared_ptr<CudaPeer> peer;
  MemType type;
  Desc desc;
  std::optional<CudaRegionInfo> ipc;  // VRAM of another process of this node
  std::string key;                    // the IPC handle bytes
  char* mapped = nullptr;             // the allocation's base here, while this holds a ref
  bool host_mapped = false;           // this process's DRAM a kernel can address (Self)
};

}  // namespace kvbm::xfer::detail::cuda
