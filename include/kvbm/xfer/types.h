// Vocabulary of the transfer agent: memory types, descriptors, operations.
#pragma once

#include "kvbm/export.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kvbm::xfer {

/// Where a descriptor's bytes live. The seed's nixl MemType.
enum class MemType : uint8_t { Dram, Vram, File, Unknown };
KVBM_API const char* to_string(MemType type);

/// One contiguous range. `addr` is a virtual address (DRAM, VRAM) or a file offset
/// (FILE); `dev_id` is 0 for DRAM, the CUDA ordinal for VRAM, the fd for FILE.
struct KVBM_API Desc {
  uint64_t addr = 0;    ///< where the range starts
  uint64_t len = 0;     ///< its bytes
  uint64_t dev_id = 0;  ///< 0 (DRAM), the CUDA ordinal (VRAM), the fd (FILE)
  /// Every field equal.
  bool operator==(const Desc&) const = default;
};

/// Descriptors of one memory type.
struct KVBM_API DescList {
  MemType type = MemType::Dram;  ///< every descriptor's memory type
  std::vector<Desc> descs;       ///< the ranges, in order

  DescList() = default;
  /// Descriptors `d` of type `t`.
  DescList(MemType t, std::vector<Desc> d = {}) : type(t), descs(std::move(d)) {}
  /// Appends one range.
  void add(uint64_t addr, uint64_t len, uint64_t dev_id = 0) {
    descs.push_back({addr, len, dev_id});
  }
  /// The number of descriptors.
  size_t size() const { return descs.size(); }
  /// Same type and descriptors.
  bool operator==(const DescList&) const = default;
};

/// READ pulls remote bytes into local memory; WRITE pushes local bytes to the remote.
enum class Op : uint8_t { Read, Write };
KVBM_API const char* to_string(Op op);

/// A notification as received: who sent it, and its bytes.
struct KVBM_API Notification {
  std::string agent;    ///< the sending agent's name
  std::string message;  ///< the bytes it sent
  /// Every field equal.
  bool operator==(const Notification&) const = default;
};

}  // namespace kvbm::xfer
