// Internal CUDA helpers shared by every layer. Compiled to stubs without CUDA.
#pragma once

#include <string_view>

#include "kvbm/cuda.h"
#include "kvbm/result.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::detail {

// OK when `ordinal` names a usable GPU; DeviceUnavailable when there is none at all;
// InvalidArgument when the ordinal is out of range.
Status check_device(int ordinal);

#if KVBM_HAVE_CUDA
// "cudaMalloc(1048576 bytes on device 0): out of memory (cudaErrorMemoryAllocation)"
Error cuda_error(ErrorCode code, cudaError_t e, std::string_view what);

// Makes `ordinal` the current device for the scope, restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int ordinal);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool changed_ = false;
};
#endif

}  // namespace kvbm::detail
