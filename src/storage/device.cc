#include "kvbm/storage/device.h"

#include <utility>

#include "common/cuda_util.h"
#include "kvbm/log.h"

namespace kvbm {

#if KVBM_HAVE_CUDA

Result<DeviceStorage> DeviceStorage::allocate(size_t size, int ordinal) {
  if (size == 0) return err(ErrorCode::InvalidArgument, "device storage size must be > 0");
  KVBM_TRY(detail::check_device(ordinal));
  detail::DeviceGuard guard(ordinal);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return detail::cuda_error(
        ErrorCode::AllocationFailed, e,
        "cudaMalloc(" + std::to_string(size) + " bytes on device " + std::to_string(ordinal) + ")");
  }
  return DeviceStorage(p, size, ordinal);
}

void DeviceStorage::reset() noexcept {
  release_registrations();
  if (ptr_ != nullptr) {
    detail::DeviceGuard guard(ordinal_);
    if (cudaError_t e = cudaFree(ptr_); e != cudaSuccess) {
      log(LogLevel::Error, detail::cuda_error(ErrorCode::Internal, e, "cudaFree").to_string());
    }
  }
  ptr_ = nullptr;
  size_ = 0;
}

#else

Result<DeviceStorage> DeviceStorage::allocate(size_t, int) {
  return cuda_device_count().error();
}
void DeviceStorage::reset() noexcept {
  release_registrations();
}

#endif

DeviceStorage::DeviceStorage(DeviceStorage&& other) noexcept
    : RegisterableStorage(std::move(other)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      ordinal_(other.ordinal_) {}

DeviceStorage& DeviceStorage::operator=(DeviceStorage&& other) noexcept {
  if (this != &other) {
    reset();
    RegisterableStorage::operator=(std::move(other));
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    ordinal_ = other.ordinal_;
  }
  return *this;
}

DeviceStorage::~DeviceStorage() {
  reset();
}

}  // namespace kvbm
