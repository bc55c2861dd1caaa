#include <algorithm>
#include <climits>

#include "copy/copy_piece.cuh"
#include "copy/gpu_copy.h"

namespace kvbm::detail {
namespace {

// ---- Block copy: CopyKernel::Baseline
// ----------------------------------------------------------------

// One CTA copies [src, src + len) to dst.
__device__ void copy_range(uint64_t src, uint64_t dst, uint64_t len) {
  copy_piece<4, uint64_t>(src, dst, len, threadIdx.x, blockDim.x);
}

__device__ uint64_t chunk_addr(const BlockSide& side, uint64_t b, uint64_t l, uint64_t o) {
  return side.bases[side.per_layer ? l : 0] + b * side.block + l * side.layer + o * side.outer;
}

__global__ void block_copy(BlockCopy job) {
  const uint64_t pieces = (job.chunk + job.piece - 1) / job.piece;
  const uint64_t per_layer = uint64_t{job.outer_dim} * pieces;
  const uint64_t per_pair = uint64_t{job.layers} * per_layer;
  const uint64_t items = job.pairs * per_pair;
  for (uint64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const uint64_t pair = it / per_pair;
    uint64_t r = it - pair * per_pair;
    const uint64_t l = r / per_layer;
    r -= l * per_layer;
    const uint64_t o = r / pieces;
    const uint64_t off = (r - o * pieces) * job.piece;
    const uint64_t len = min(job.piece, job.chunk - off);
    copy_range(chunk_addr(job.src, job.ids[2 * pair], l, o) + off,
               chunk_addr(job.dst, job.ids[2 * pair + 1], l, o) + off, len);
  }
}

// ---- Block copy: CopyKernel::Cta and CopyKernel::Warp
// --------------------------------------------------

// The job's item space, computed once on the host in the kernel's index type: 32 bits
// where everything fits, since 64-bit division is a long software routine on the GPU.
template <typename Index>
struct Items {
  Index count;      // pairs * per_pair
  Index per_pair;   // layers * per_layer
  Index per_layer;  // outer_dim * pieces
  Index pieces;     // per chunk
  Index piece;      // bytes, at most chunk
  Index chunk;      // bytes
};

// One piece: where it is in its chunk, and its block ids and region bases, loaded.
template <typename Index>
struct Piece {
  uint64_t src_id, dst_id, src_base, dst_base;
  Index layer, outer, off, len;
};

// Decodes item `it` and issues the loads of its ids and bases. Nothing here waits for
// them: the caller uses the piece only after copying the previous one.
template <typename Index>
__device__ __forceinline__ Piece<Index> load_piece(const BlockCopy& job, const Items<Index>& n,
                                                   Index it) {
  Piece<Index> p;
  const Index pair = it / n.per_pair;
  Index r = it - pair * n.per_pair;
  p.layer = r / n.per_layer;
  r -= p.layer * n.per_layer;
  p.outer = r / n.pieces;
  p.off = (r - p.outer * n.pieces) * n.piece;
  p.len = min(n.piece, n.chunk - p.off);
  // The table is written before the launch and only read by it: the read-only path.
  p.src_id = __ldg(job.ids + 2 * uint64_t{pair});
  p.dst_id = __ldg(job.ids + 2 * uint64_t{pair} + 1);
  p.src_base = __ldg(job.src.bases + (job.src.per_layer ? p.layer : 0));
  p.dst_base = __ldg(job.dst.bases + (job.dst.per_layer ? p.layer : 0));
  return p;
}

__device__ __forceinline__ uint64_t piece_addr(const BlockSide& side, uint64_t base, uint64_t id,
                                               uint64_t layer, uint64_t outer, uint64_t off) {
  return base + id * side.block + layer * side.layer + outer * side.outer + off;
}

// Workers (a CTA each, or a warp each with kWarp) stride over the items. While a worker
// copies one piece, the ids and bases of its next piece are already on their way, so the
// dependent round trip (ids, then data) is paid once per worker, not once per piece.
template <typename Index, bool kWarp>
__global__ void block_copy_prefetch(BlockCopy job, Items<Index> n) {
  constexpr int kUnroll = 4;
  const Index lane = kWarp ? threadIdx.x % 32 : threadIdx.x;
  const Index width = kWarp ? 32 : blockDim.x;
  const Index worker =
      kWarp ? Index{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32 : Index{blockIdx.x};
  const Index workers = kWarp ? Index{gridDim.x} * (blockDim.x / 32) : Index{gridDim.x};
  if (worker >= n.count) return;  // no barriers below: a worker may leave early
  Piece<Index> cur = load_piece(job, n, worker);
  for (Index it = worker;;) {
    const Index next = it + workers;  // no overflow: count + workers fits Index (host check)
    const bool more = next < n.count;
    Piece<Index> ahead{};
    if (more) ahead = load_piece(job, n, next);
    copy_piece<kUnroll>(
        piece_addr(job.src, cur.src_base, cur.src_id, cur.layer, cur.outer, cur.off),
        piece_addr(job.dst, cur.dst_base, cur.dst_id, cur.layer, cur.outer, cur.off), cur.len, lane,
        width);
    if (!more) break;
    it = next;
    cur = ahead;
  }
}

template <typename Index>
cudaError_t launch_prefetch(const BlockCopy& job, const Items<uint64_t>& n64, bool warp,
                            unsigned grid, unsigned threads, cudaStream_t stream) {
  const Items<Index> n{static_cast<Index>(n64.count),     static_cast<Index>(n64.per_pair),
                       static_cast<Index>(n64.per_layer), static_cast<Index>(n64.pieces),
                       static_cast<Index>(n64.piece),     static_cast<Index>(n64.chunk)};
  if (warp) {
    block_copy_prefetch<Index, true><<<grid, threads, 0, stream>>>(job, n);
  } else {
    block_copy_prefetch<Index, false><<<grid, threads, 0, stream>>>(job, n);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_block_copy_kernel(const BlockCopy& job, const CopyLaunch& launch,
                                     cudaStream_t stream) {
  if (job.pairs == 0 || job.layers == 0 || job.outer_dim == 0 || job.chunk == 0) {
    return cudaSuccess;
  }
  if (job.piece == 0) return cudaErrorInvalidValue;
  const uint64_t max_ctas = std::max(launch.max_ctas, 1u);
  if (launch.kernel == CopyKernel::Baseline) {
    const uint64_t items =
        job.pairs * job.layers * job.outer_dim * ((job.chunk + job.piece - 1) / job.piece);
    const auto grid = static_cast<unsigned>(std::min(items, max_ctas));
    block_copy<<<grid, launch.threads, 0, stream>>>(job);
    return cudaGetLastError();
  }
  Items<uint64_t> n{};
  n.chunk = job.chunk;
  n.piece = std::min(job.piece, job.chunk);
  n.pieces = (n.chunk + n.piece - 1) / n.piece;
  n.per_layer = job.outer_dim * n.pieces;
  n.per_pair = job.layers * n.per_layer;
  n.count = job.pairs * n.per_pair;
  // Warp items only for small pieces: a large one is better shared by a whole CTA.
  const bool warp = launch.kernel == CopyKernel::Warp && n.piece <= kWarpMaxPiece;
  // A warp kernel needs whole warps: the thread count is rounded up to a multiple of 32.
  const unsigned asked = std::max(launch.threads, 1u);
  const unsigned threads = warp ? std::min((asked + 31) / 32 * 32, 1024u) : asked;
  const uint64_t per_cta = warp ? threads / 32 : 1;
  const auto grid = static_cast<unsigned>(std::min((n.count + per_cta - 1) / per_cta, max_ctas));
  const uint64_t workers = grid * per_cta;
  // 32 bits when every index and every index + workers stays below 2^32.
  const bool narrow =
      !launch.index64 && n.count <= INT32_MAX && n.chunk <= INT32_MAX && workers <= INT32_MAX;
  return narrow ? launch_prefetch<uint32_t>(job, n, warp, grid, threads, stream)
                : launch_prefetch<uint64_t>(job, n, warp, grid, threads, stream);
}

namespace {

// ---- Piece list ---------------------------------------------------------------------------

constexpr unsigned kThreads = 512;  // 16 warps per CTA
constexpr unsigned kMaxCtas = 1024;

// Warps stride over the pieces, each copying one piece at a time; a piece's table entry
// is read by every lane of its warp (one broadcast load).
__global__ void copy_list(const CopyPiece* __restrict__ pieces, uint32_t count) {
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const uint32_t warps = gridDim.x * blockDim.x / 32;
  for (uint32_t i = warp; i < count; i += warps) {
    const CopyPiece p = pieces[i];
    copy_piece<4, uint32_t>(p.src, p.dst, static_cast<uint32_t>(p.len), lane, 32u);
  }
}

// CTAs stride over slices of one copy: each thread issues its 4 loads of a slice at once.
constexpr uint32_t kSliceBytes = kThreads * 16 * 4;

__global__ void copy_one(uint64_t src, uint64_t dst, uint32_t len) {
  for (uint32_t off = blockIdx.x * kSliceBytes; off < len; off += gridDim.x * kSliceBytes) {
    // Slices start at multiples of 16: each keeps the alignment of the whole copy.
    copy_piece<4, uint32_t>(src + off, dst + off, min(kSliceBytes, len - off), threadIdx.x,
                            kThreads);
  }
}

}  // namespace

cudaError_t launch_copy_one(uint64_t src, uint64_t dst, uint64_t len, cudaStream_t stream) {
  if (len == 0) return cudaSuccess;
  if (len > kCopyOneMaxBytes) return cudaErrorInvalidValue;
  const uint64_t slices = (len + kSliceBytes - 1) / kSliceBytes;
  const auto grid = static_cast<unsigned>(std::min<uint64_t>(slices, kMaxCtas));
  copy_one<<<grid, kThreads, 0, stream>>>(src, dst, static_cast<uint32_t>(len));
  return cudaGetLastError();
}

cudaError_t launch_copy_list(const CopyPiece* pieces, uint32_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const unsigned warps_per_cta = kThreads / 32;
  const unsigned grid = std::min<unsigned>((count + warps_per_cta - 1) / warps_per_cta, kMaxCtas);
  copy_list<<<grid, kThreads, 0, stream>>>(pieces, count);
  return cudaGetLastError();
}

}  // namespace kvbm::detail
