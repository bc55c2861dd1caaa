// Vocabulary of the transfer agent: memory types, descriptors, operations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvbm::xfer {

// Where a descriptor's bytes live. The seed's nixl MemType.
enum class MemType : uint8_t { Dram, Vram, File, Unknown };
const char* to_string(MemType type);

// One contiguous range. `addr` is a virtual address (DRAM, VRAM) or a file offset
// (FILE); `dev_id` is 0 for DRAM, the CUDA ordinal for VRAM, the fd for FILE.
struct Desc {
  uint64_t addr = 0;
  uint64_t len = 0;
  uint64_t dev_id = 0;
  bool operator==(const Desc&) const = default;
};

// Descriptors of one memory type.
struct DescList {
  MemType type = MemType::Dram;
  std::vector<Desc> descs;

  DescList() = default;
  DescList(MemType t, std::vector<Desc> d = {}) : type(t), descs(std::move(d)) {}
  void add(uint64_t addr, uint64_t len, uint64_t dev_id = 0) {
    descs.push_back({addr, len, dev_id});
  }
  size_t size() const { return descs.size(); }
  bool operator==(const DescList&) const = default;
};

// READ pulls remote bytes into local memory; WRITE pushes local bytes to the remote.
enum class Op : uint8_t { Read, Write };
const char* to_string(Op op);

// A notification as received: who sent it, and its bytes.
struct Notification {
  std::string agent;
  std::string message;
  bool operator==(const Notification&) const = default;
};

}  // namespace kvbm::xfer
