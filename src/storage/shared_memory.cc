#include "storage/shared_memory.h"

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <mutex>

namespace kvbm::detail {
namespace {

struct Mapping {
  size_t len;
  int fd;
};

struct Registry {
  std::mutex mu;
  std::map<uint64_t, Mapping> by_base;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: storages may outlive statics
  return *r;
}

}  // namespace

void add_shared_memory(const void* base, size_t len, int fd) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.by_base[reinterpret_cast<uint64_t>(base)] = Mapping{len, fd};
}

void remove_shared_memory(const void* base) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.by_base.erase(reinterpret_cast<uint64_t>(base));
}

std::optional<SharedFile> find_shared_memory(uint64_t addr, uint64_t len) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.by_base.upper_bound(addr);
  if (it == r.by_base.begin()) return std::nullopt;
  --it;
  const uint64_t offset = addr - it->first;
  if (offset > it->second.len || len > it->second.len - offset) return std::nullopt;
  // Duplicated under the lock, so the storage cannot close it in between.
  const int fd = ::fcntl(it->second.fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  return SharedFile{fd, offset};
}

}  // namespace kvbm::detail
