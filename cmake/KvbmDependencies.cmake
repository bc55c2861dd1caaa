# Every dependency comes from Debian's packages (scripts/install-deps).
find_package(Threads REQUIRED)
# Agent metadata's wire form (src/xfer/metadata.proto); linked privately into libkvbm.
find_package(Protobuf REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(UCX REQUIRED IMPORTED_TARGET ucx)
# File I/O (src/common/uring_batch.cc); linked privately into libkvbm.
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
# etcd discovery (src/xfer/etcd_client.cc): HTTP through libcurl (base64 through OpenSSL,
# linked in src/ for authentication too).
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)

set(KVBM_HAVE_CUDA 0)
if(KVBM_CUDA)
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(KVBM_HAVE_CUDA 1)
    # CUDA code (the block copy kernel) for the H100 (sm_90) and A100 (sm_80).
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    if(NOT DEFINED CMAKE_CUDA_COMPILER)
      set(CMAKE_CUDA_COMPILER ${CUDAToolkit_NVCC_EXECUTABLE})
    endif()
    set(CMAKE_CUDA_STANDARD 17)
    enable_language(CUDA)
    message(STATUS "kvbm: CUDA ${CUDAToolkit_VERSION} at ${CUDAToolkit_BIN_DIR}")
  else()
    message(STATUS "kvbm: CUDA toolkit not found; building without CUDA")
  endif()
endif()

if(KVBM_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(KVBM_BUILD_TOOLS)
  find_package(CLI11 REQUIRED)
endif()
if(KVBM_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
