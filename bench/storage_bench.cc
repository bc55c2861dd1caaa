// Allocation cost per tier and size: what an engine pays to grow a pool.
#include <benchmark/benchmark.h>

#include "kvbm/storage.h"

namespace {

void BM_SystemAllocate(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    auto s = kvbm::SystemAllocator().allocate(size);
    benchmark::DoNotOptimize(s->data());
  }
}
BENCHMARK(BM_SystemAllocate)->Range(4 << 10, 64 << 20);

void BM_DiskAllocate(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    auto s = kvbm::DiskAllocator().allocate(size);
    if (!s) state.SkipWithError(s.error().message.c_str());
  }
}
BENCHMARK(BM_DiskAllocate)->Range(4 << 10, 64 << 20);

}  // namespace
