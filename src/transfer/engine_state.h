// The transfer engine's state (TransferEngine::State): its options, the host pool, and the
// paths' engines, created on first use. Shared by the engine and its copy paths.
//
// Thread safety: the pool is; `mu` guards the lazily created members.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "common/uring_worker.h"
#include "copy/host_pool.h"
#include "kvbm/transfer.h"
#include "transfer/cuda_copier.h"
#include "transfer/staged_copier.h"

namespace kvbm::detail {

struct EngineState {
  TransferEngineOptions options;
  HostPool pool;
  std::mutex mu;  // guards the lazily created paths below
  std::vector<std::unique_ptr<CudaCopier>> cuda;
  std::shared_ptr<UringWorker> files;    // shared: registrations hold it weakly
  std::unique_ptr<StagedCopier> staged;  // destroyed first: it uses `cuda`

  explicit EngineState(const TransferEngineOptions& o) : options(o), pool(o.host_threads) {}

  Result<CudaCopier*> cuda_for(int ordinal) {
    std::lock_guard lock(mu);
    for (auto& c : cuda) {
      if (c->ordinal() == ordinal) return c.get();
    }
    auto c = CudaCopier::create(ordinal, options, pool);
    if (!c) return c.error();
    cuda.push_back(std::move(*c));
    return cuda.back().get();
  }

  Result<std::shared_ptr<UringWorker>> file_worker() {
    std::lock_guard lock(mu);
    if (!files) {
      auto w = UringWorker::create(options.uring_queue_depth);
      if (!w) return w.error();
      files = std::move(*w);
    }
    return files;
  }

  Result<StagedCopier*> staged_copier() {
    std::lock_guard lock(mu);
    if (!staged) {
      auto c = StagedCopier::create(options.staging_bytes, options.uring_queue_depth);
      if (!c) return c.error();
      staged = std::move(*c);
    }
    return staged.get();
  }
};

}  // namespace kvbm::detail
