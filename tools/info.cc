// `kvbm info`: what this machine offers kvbm.
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "commands.h"
#include "kvbm/storage.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {

int run_info() {
  Table t({"item", "value"});
  t.add({"kvbm built with CUDA", built_with_cuda() ? "yes" : "no"});
  auto gpus = cuda_device_count();
  t.add({"GPUs", gpus ? std::to_string(*gpus) : gpus.error().to_string()});
#if KVBM_HAVE_CUDA
  for (int i = 0; gpus && i < *gpus; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      t.add({"GPU " + std::to_string(i),
             std::string(prop.name) + ", " +
                 human_bytes(prop.totalGlobalMem / (1 << 20) * (1 << 20))});
    }
  }
#endif
  t.add({"CPU cores", std::to_string(sysconf(_SC_NPROCESSORS_ONLN))});
  t.add({"page size", std::to_string(sysconf(_SC_PAGESIZE))});
  t.add({"temp dir", std::filesystem::temp_directory_path().string()});
  t.print(std::cout);
  return 0;
}

}  // namespace kvbm::tools
