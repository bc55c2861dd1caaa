#include "kvbm/storage/pinned.h"

#include <utility>

#include "common/cuda_util.h"
#include "kvbm/log.h"

namespace kvbm {

PinnedStorage::PinnedStorage(void* ptr, size_t size, Origin origin,
                             std::optional<SystemStorage> owned)
    : ptr_(ptr), device_ptr_(ptr), size_(size), origin_(origin), owned_(std::move(owned)) {
#if KVBM_HAVE_CUDA
  void* dev = nullptr;
  if (cudaHostGetDevicePointer(&dev, ptr_, 0) == cudaSuccess) device_ptr_ = dev;
  cudaGetLastError();
#endif
}

#if KVBM_HAVE_CUDA

Result<PinnedStorage> PinnedStorage::allocate(size_t size) {
  if (size == 0) return err(ErrorCode::InvalidArgument, "pinned storage size must be > 0");
  if (auto count = cuda_device_count(); !count) return count.error();
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, size, cudaHostAllocPortable | cudaHostAllocMapped);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return detail::cuda_error(ErrorCode::AllocationFailed, e,
                              "cudaHostAlloc(" + std::to_string(size) + " bytes)");
  }
  return PinnedStorage(p, size, Origin::HostAlloc, std::nullopt);
}

Result<PinnedStorage> PinnedStorage::pin(void* ptr, size_t size) {
  if (ptr == nullptr) return err(ErrorCode::InvalidArgument, "cannot pin a null pointer");
  if (size == 0) return err(ErrorCode::InvalidArgument, "pinned storage size must be > 0");
  if (auto count = cuda_device_count(); !count) return count.error();
  cudaError_t e = cudaHostRegister(ptr, size, cudaHostRegisterPortable | cudaHostRegisterMapped);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return detail::cuda_error(ErrorCode::RegistrationFailed, e,
                              "cudaHostRegister(" + std::to_string(size) + " bytes)");
  }
  return PinnedStorage(ptr, size, Origin::Registered, std::nullopt);
}

void PinnedStorage::reset() noexcept {
  release_registrations();
  if (ptr_ != nullptr) {
    cudaError_t e = origin_ == Origin::HostAlloc ? cudaFreeHost(ptr_) : cudaHostUnregister(ptr_);
    if (e != cudaSuccess) {
      log(LogLevel::Error,
          detail::cuda_error(ErrorCode::Internal, e, "freeing pinned memory").to_string());
    }
  }
  owned_.reset();  // after unpinning, the memory itself
  ptr_ = device_ptr_ = nullptr;
  size_ = 0;
}

#else

Result<PinnedStorage> PinnedStorage::allocate(size_t) {
  return cuda_device_count().error();
}
Result<PinnedStorage> PinnedStorage::pin(void*, size_t) {
  return cuda_device_count().error();
}
void PinnedStorage::reset() noexcept {
  release_registrations();
  owned_.reset();
  ptr_ = device_ptr_ = nullptr;
  size_ = 0;
}

#endif

Result<PinnedStorage> PinnedStorage::pin(SystemStorage memory) {
  auto pinned = pin(memory.data(), memory.size());
  if (!pinned) return pinned.error();
  pinned->owned_ = std::move(memory);
  return pinned;
}

PinnedStorage::PinnedStorage(PinnedStorage&& other) noexcept
    : RegisterableStorage(std::move(other)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      device_ptr_(std::exchange(other.device_ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      origin_(other.origin_),
      owned_(std::exchange(other.owned_, std::nullopt)) {}

PinnedStorage& PinnedStorage::operator=(PinnedStorage&& other) noexcept {
  if (this != &other) {
    reset();
    RegisterableStorage::operator=(std::move(other));
    ptr_ = std::exchange(other.ptr_, nullptr);
    device_ptr_ = std::exchange(other.device_ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    origin_ = other.origin_;
    owned_ = std::exchange(other.owned_, std::nullopt);
  }
  return *this;
}

PinnedStorage::~PinnedStorage() {
  reset();
}

}  // namespace kvbm
