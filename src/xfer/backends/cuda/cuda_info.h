// What the CUDA backend publishes about itself and its regions, and its checked decoding
// (the bytes come from peers: untrusted). Plain data, no CUDA calls, so it is compiled
// and unit-tested in every build.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

// The node and process of an agent's CUDA backend, plus the UCX worker address its
// staged path listens on. Peers on the same node (equal boot id) in other processes are
// reached through CUDA IPC; others through the staged path.
struct CudaConnectionInfo {
  std::string boot_id;
  int64_t pid = 0;
  std::string ucx_address;   // may be empty: the peer has no staged path
  uint64_t chunk_bytes = 0;  // the largest staged chunk the peer accepts (its bounce buffers)

  std::string encode() const;
  static Result<CudaConnectionInfo> decode(std::string_view bytes);
};

// A VRAM region as its exporter publishes it: the CUDA IPC handle of the allocation that
// holds it, the allocation's base address and size in the exporter's address space (the
// importer maps the whole allocation once and offsets into it), and the exporter's node
// and process. DRAM regions publish nothing (empty remote info).
struct CudaRegionInfo {
  static constexpr size_t kHandleBytes = 64;  // CUDA_IPC_HANDLE_SIZE
  std::array<char, kHandleBytes> handle{};
  uint64_t alloc_base = 0;
  uint64_t alloc_size = 0;
  int32_t device = 0;
  int64_t pid = 0;
  std::string boot_id;

  std::string encode() const;
  // InvalidArgument for wrong sizes, a bad magic or version, or a region (`addr`, `len`)
  // that does not lie inside the published allocation.
  static Result<CudaRegionInfo> decode(std::string_view bytes, uint64_t addr, uint64_t len);
};

}  // namespace kvbm::xfer::detail
