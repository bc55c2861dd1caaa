// The Cuda path's kernel tuning knobs: kept out of the public header (kvbm/transfer.h), set
// by benchmarks (`kvbm bench transfer --cuda-*`) and tests through
// TransferEngineOptions::cuda_tuning. Measured effects are in BENCHMARKS.md.
//
// Thread safety: plain values, read by the engine when it makes a GPU's copier.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvbm/transfer.h"

namespace kvbm {

// The block copy kernel of the Cuda path (src/copy/gpu_copy.cu). Each splits every
// chunk into pieces of at most CudaTuning::max_piece bytes and copies them with 16-byte
// accesses where both ends are 16-byte aligned, bytes otherwise.
//   Baseline  one CTA per piece; 64-bit index arithmetic; a piece's block ids are loaded
//             just before its copy, so each piece pays a dependent round trip first.
//   Cta       one CTA per piece; 32-bit index arithmetic where the request fits; the next
//             piece's ids are loaded while the current one copies.
//   Warp      as Cta, but one warp per piece when pieces are at most 32 KiB (more
//             independent pieces in flight per SM); larger pieces go as in Cta. The
//             default: the fastest on small chunks (BENCHMARKS.md).
enum class CudaCopyKernel : uint8_t { Baseline, Cta, Warp };

inline const char* to_string(CudaCopyKernel kernel) {
  switch (kernel) {
    case CudaCopyKernel::Baseline:
      return "baseline";
    case CudaCopyKernel::Cta:
      return "cta";
    case CudaCopyKernel::Warp:
      return "warp";
  }
  return "?";
}

namespace detail {

struct CudaTuning {
  // Kernel launch shape: CTAs per SM, threads per CTA, largest piece one CTA copies.
  unsigned ctas_per_sm = 4;
  unsigned threads = 512;
  size_t max_piece = 256 << 10;
  CudaCopyKernel kernel = CudaCopyKernel::Warp;
  // Cta and Warp: 64-bit index arithmetic even where 32 bits suffice (for tests).
  bool index64 = false;
  // CudaHostEngine::Gather where forced: the share of a request's blocks the kernel copies
  // beside the gather (0: none). Auto measures it instead.
  double gather_kernel_share = 0;
};

// The options' tuning, or the defaults where none is set.
inline const CudaTuning& cuda_tuning(const TransferEngineOptions& options) {
  static const CudaTuning defaults;
  return options.cuda_tuning ? *options.cuda_tuning : defaults;
}

}  // namespace detail
}  // namespace kvbm
