#include "common/cuda_util.h"

#include <dlfcn.h>

#include <string>

#include "kvbm/cuda.h"

namespace kvbm {

bool built_with_cuda() {
  return KVBM_HAVE_CUDA != 0;
}

#if KVBM_HAVE_CUDA

namespace {

// Whether the NVIDIA driver's user-space library can be loaded at all.
bool driver_library_present() {
  void* handle = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (handle == nullptr) return false;
  dlclose(handle);
  return true;
}

}  // namespace

Result<int> cuda_device_count() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    // Without any driver CUDA says its version "is insufficient": say what is missing.
    if (e == cudaErrorInsufficientDriver && !driver_library_present()) {
      return err(ErrorCode::DeviceUnavailable,
                 "no usable GPU: no NVIDIA driver (libcuda.so.1 not found)");
    }
    return detail::cuda_error(ErrorCode::DeviceUnavailable, e, "no usable GPU: cudaGetDeviceCount");
  }
  if (n == 0) return err(ErrorCode::DeviceUnavailable, "no usable GPU: cudaGetDeviceCount found 0");
  return n;
}

namespace detail {

Error cuda_error(ErrorCode code, cudaError_t e, std::string_view what) {
  return err(code, what, ": ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
}

Status check_device(int ordinal) {
  auto count = cuda_device_count();
  if (!count) return count.error();
  if (ordinal < 0 || ordinal >= *count) {
    return err(ErrorCode::InvalidArgument, "device ordinal ", ordinal, " does not exist (", *count,
               " GPU(s) present)");
  }
  return {};
}

DeviceGuard::DeviceGuard(int ordinal) {
  if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != ordinal) {
    changed_ = cudaSetDevice(ordinal) == cudaSuccess;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) cudaSetDevice(previous_);
}

}  // namespace detail

#else  // !KVBM_HAVE_CUDA

Result<int> cuda_device_count() {
  return err(ErrorCode::DeviceUnavailable, "kvbm was built without CUDA (KVBM_CUDA=OFF)");
}

namespace detail {
Status check_device(int) {
  return cuda_device_count().error();
}
}  // namespace detail

#endif

}  // namespace kvbm
