// What CUDA this process can use. Thread-safe.
#pragma once

#include "kvbm/export.h"

#include "kvbm/result.h"

namespace kvbm {

/// True when kvbm was compiled with CUDA support.
KVBM_API bool built_with_cuda();

/// The number of usable GPUs; DeviceUnavailable (with CUDA's reason) when there is no
/// driver, no GPU, or no CUDA build.
KVBM_API Result<int> cuda_device_count();

}  // namespace kvbm
