// The backend types compiled into this build, by name.
#include "xfer/backend.h"
#include "xfer/backends/gds/gds_backend.h"
#include "xfer/backends/null/null_backend.h"
#include "xfer/backends/posix/posix_backend.h"
#include "xfer/backends/ucx/ucx_backend.h"
#if KVBM_HAVE_CUDA
#include "xfer/backends/cuda/cuda_backend.h"
#endif

namespace kvbm::xfer::detail {
namespace {

struct Entry {
  const char* name;
  BackendFactory factory;
};

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = {
    {"UCX", make_ucx_backend},
    {"POSIX", make_posix_backend},
    {"GDS", make_gds_backend},    // not a default: needs a GPU
    {"NULL", make_null_backend},  // not a default: the contract's smallest example
#if KVBM_HAVE_CUDA
    {"CUDA", make_cuda_backend},
#endif
  };
  return entries;
}

}  // namespace

Result<std::unique_ptr<Backend>> make_backend(const std::string& type, const BackendEnv& env,
                                              const BackendParams& params) {
  for (const auto& e : registry()) {
    if (type == e.name) return e.factory(env, params);
  }
  std::string known;
  for (const auto& e : registry()) known += std::string(known.empty() ? "" : ", ") + e.name;
  return err(ErrorCode::NotFound, "unknown backend '", type, "' (this build has: ", known, ")");
}

std::vector<std::string> known_backends() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.emplace_back(e.name);
  return names;
}

}  // namespace kvbm::xfer::detail
