#include "kvbm/pool/config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

namespace kvbm {
namespace {

// A size in GiB from the environment, as blocks of `bytes`; nullopt when unset.
Result<std::optional<size_t>> env_blocks(const char* name, size_t bytes) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::optional<size_t>();
  char* end = nullptr;
  errno = 0;
  const double gib = std::strtod(value, &end);
  if (end == value || *end != '\0' || errno != 0 || !std::isfinite(gib) || gib < 0 || gib > 1e9) {
    return err(ErrorCode::InvalidArgument, name, "='", value,
               "' is not a size in GiB (a non-negative number)");
  }
  return std::optional<size_t>(static_cast<size_t>(gib * double(size_t{1} << 30) / bytes));
}

}  // namespace

size_t block_bytes(const LayoutConfig& block) {
  return block.num_layers * block.outer_dim * block.chunk_bytes();
}

Status apply_env_overrides(BlockManagerConfig& config) {
  LayoutConfig one = config.block;
  one.num_blocks = 1;
  KVBM_TRY(one.validate());
  const size_t bytes = block_bytes(one);
  auto g2 = env_blocks("KVBM_CPU_CACHE_GB", bytes);
  if (!g2) return g2.error();
  auto g3 = env_blocks("KVBM_DISK_CACHE_GB", bytes);
  if (!g3) return g3.error();
  if (*g2) config.g2_blocks = **g2;
  if (*g3) config.g3_blocks = **g3;
  return {};
}

}  // namespace kvbm
