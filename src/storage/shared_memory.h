// Which host memory of this process another process can map: SystemStorage allocates
// from a memfd and records it here, so that a transport (the UCX backend on one host)
// can publish the file and a peer on the same host can map the very pages and copy with
// plain loads and stores, as UCX does with its own shared segments.
//
// Thread safety: every function may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace kvbm::detail {

// A file that holds a range of this process's memory.
struct SharedFile {
  int fd = -1;          // owned by the caller of find_shared_memory (a dup): close it
  uint64_t offset = 0;  // of the range's first byte in the file
};

// Records that [base, base + len) maps `fd` from offset 0. The fd stays the caller's.
void add_shared_memory(const void* base, size_t len, int fd);
// Forgets the mapping that starts at base (before it is unmapped and its fd closed).
void remove_shared_memory(const void* base);
// The file behind [addr, addr + len) when one recorded mapping holds the whole range,
// with a duplicate of its fd (so it outlives the storage); nullopt otherwise.
std::optional<SharedFile> find_shared_memory(uint64_t addr, uint64_t len);

}  // namespace kvbm::detail
