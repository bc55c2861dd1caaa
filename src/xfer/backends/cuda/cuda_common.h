// What the CUDA backend's units share: CUDA errors as values, the driver's
// cuMemGetAddressRange reached through cudart. Not a public interface.
#pragma once

#include <cuda.h>  // CUresult and CUdeviceptr only: the driver is reached through cudart
#include <cuda_runtime_api.h>

#include <string_view>

#include "common/cuda_util.h"
#include "common/hex.h"
#include "kvbm/result.h"

namespace kvbm::xfer::detail::cuda {

using ::kvbm::detail::DeviceGuard;
using kvbm::detail::hex;

inline Error cuda_fail(ErrorCode code, cudaError_t e, std::string_view what) {
  cudaGetLastError();  // clear it, so later calls start clean
  return ::kvbm::detail::cuda_error(code, e, what);
}

using CuMemGetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);

// cuMemGetAddressRange through cudart, so that the library never links libcuda.
inline CuMemGetAddressRange address_range_fn() {
  static CuMemGetAddressRange fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &p, 3020, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<CuMemGetAddressRange>(nullptr);
    }
    return reinterpret_cast<CuMemGetAddressRange>(p);
  }();
  return fn;
}

}  // namespace kvbm::xfer::detail::cuda
