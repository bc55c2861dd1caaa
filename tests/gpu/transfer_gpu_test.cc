// The CUDA path of the transfer engine (skips without a GPU): Device <-> Pinned,
// Device <-> Device, Device <-> System, scattered ids, every byte checked on the host.
// Every test runs once per block copy kernel (TransferEngineOptions::cuda_kernel), the
// Cta and Warp kernels also with 64-bit index arithmetic forced. Then the Staged path:
// Disk <-> Device through the engine's pinned staging buffer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "kvbm/storage.h"
#include "kvbm/transfer.h"
#include "support/block_pattern.h"
#include "support/test_support.h"
#include "transfer/cuda_tuning.h"

namespace kvbm {
namespace {

using namespace std::chrono_literals;
using testing::check_blocks;
using testing::fill_all_blocks;

LayoutConfig config(size_t blocks, size_t page, size_t alignment) {
  LayoutConfig c;
  c.num_blocks = blocks;
  c.num_layers = 4;
  c.outer_dim = 2;
  c.page_size = page;
  c.inner_dim = 64;
  c.dtype_bytes = 2;
  c.alignment = alignment;
  return c;
}

template <typename Alloc>
Layout make(const LayoutConfig& c, LayoutKind kind, LayerOrder order, const Alloc& alloc) {
  auto l = Layout::allocate(c, kind, alloc, order);
  EXPECT_TRUE(l.ok()) << l.error().to_string();
  return std::move(*l);
}

struct Host {
  const char* name;
  bool pinned;
};

// host -> device (scattered) -> device (scattered) -> host: each hop on the CUDA path.
void round_trip(TransferEngine& e, const Host& h, size_t page, size_t alignment) {
  SCOPED_TRACE(std::string(h.name) + " page " + std::to_string(page) + " alignment " +
               std::to_string(alignment));
  const LayoutConfig hc = config(16, page, alignment);
  const LayoutConfig dc = config(24, page, 256);
  auto host = [&](LayoutKind k, LayerOrder o) {
    return h.pinned ? make(hc, k, o, PinnedAllocator()) : make(hc, k, o, SystemAllocator());
  };
  Layout src = host(LayoutKind::FullyContiguous, LayerOrder::BlockMajor);
  Layout back = host(LayoutKind::LayerSeparate, LayerOrder::OuterMajor);
  Layout g1 = make(dc, LayoutKind::LayerSeparate, LayerOrder::BlockMajor, DeviceAllocator(0));
  Layout g2 = make(dc, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DeviceAllocator(0));
  fill_all_blocks(src, 11);
  const std::vector<size_t> s = {3, 15, 0, 7, 8, 9, 1};
  const std::vector<size_t> d1 = {23, 0, 5, 6, 7, 12, 2};
  const std::vector<size_t> d2 = {1, 2, 3, 4, 20, 21, 22};
  const std::vector<size_t> b = {0, 2, 4, 6, 8, 10, 15};
  auto t1 = e.copy(src, s, g1, d1);
  ASSERT_TRUE(t1.ok()) << t1.error().to_string();
  EXPECT_EQ(t1->path(), TransferPath::Cuda);
  ASSERT_TRUE(t1->wait(30s).ok());
  auto t2 = e.copy(g1, d1, g2, d2);
  ASSERT_TRUE(t2.ok()) << t2.error().to_string();
  ASSERT_TRUE(t2->wait(30s).ok());
  auto t3 = e.copy(g2, d2, back, b);
  ASSERT_TRUE(t3.ok()) << t3.error().to_string();
  auto st = t3->wait(30s);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_TRUE(t3->ready());
  EXPECT_EQ(check_blocks(back, b, s, 11), "");
}

// round_trip at small, byte-sized and large chunks in pinned memory, and in pageable memory
// (which a forced host engine does not take: the Cuda path copies it a chunk at a time).
void round_trips_of_every_shape(TransferEngine& e) {
  round_trip(e, Host{"pinned", true}, 16, 256);
  round_trip(e, Host{"pinned", true}, 1, 1);
  round_trip(e, Host{"pinned", true}, 1024, 4096);
  round_trip(e, Host{"system", false}, 16, 256);
}

// An engine whose pinned <-> GPU engine is `forced`; null (and a failure) where it cannot
// be made.
std::unique_ptr<TransferEngine> forced_engine(
    CudaHostEngine forced, std::shared_ptr<const detail::CudaTuning> tuning = nullptr) {
  TransferEngineOptions o;
  o.cuda_host_engine = forced;
  o.cuda_tuning = std::move(tuning);
  auto e = TransferEngine::create(o);
  EXPECT_TRUE(e.ok()) << e.error().to_string();
  return e ? std::move(*e) : nullptr;
}

struct Kernel {
  CudaCopyKernel kernel;
  bool index64;
};
void PrintTo(const Kernel& k, std::ostream* os) {
  *os << to_string(k.kernel) << (k.index64 ? ", 64-bit index" : "");
}

class TransferGpu : public ::testing::TestWithParam<Kernel> {
 protected:
  detail::CudaTuning tuning() const {
    detail::CudaTuning t;
    t.kernel = GetParam().kernel;
    t.index64 = GetParam().index64;
    return t;
  }
  TransferEngineOptions options(const detail::CudaTuning& t) const {
    TransferEngineOptions o;
    o.cuda_tuning = std::make_shared<const detail::CudaTuning>(t);
    o.cuda_host_engine = CudaHostEngine::Kernel;  // pinned memory too goes through the kernel
    return o;
  }
  TransferEngineOptions options() const { return options(tuning()); }
};

INSTANTIATE_TEST_SUITE_P(
    Kernels, TransferGpu,
    ::testing::Values(Kernel{CudaCopyKernel::Baseline, false}, Kernel{CudaCopyKernel::Cta, false},
                      Kernel{CudaCopyKernel::Cta, true}, Kernel{CudaCopyKernel::Warp, false},
                      Kernel{CudaCopyKernel::Warp, true}),
    [](const ::testing::TestParamInfo<Kernel>& p) {
      return std::string(to_string(p.param.kernel)) + (p.param.index64 ? "_index64" : "");
    });

TEST_P(TransferGpu, PinnedAndSystemThroughTwoDeviceLayouts) {
  KVBM_REQUIRE_GPU();
  auto e = TransferEngine::create(options());
  ASSERT_TRUE(e.ok());
  for (const Host& h : {Host{"pinned", true}, Host{"system", false}}) {
    round_trip(**e, h, 16, 256);     // 2 KiB chunks, 16-byte aligned: vector copies
    round_trip(**e, h, 1, 1);        // 128-byte chunks
    round_trip(**e, h, 1024, 4096);  // 128 KiB chunks: one CTA per piece also in Warp
  }
}

// One CTA per SM, so that every worker (CTA or warp) strides over several pieces and
// copies each while the next one's ids are loaded.
TEST_P(TransferGpu, ChunksSplitIntoPiecesOfAnySize) {
  KVBM_REQUIRE_GPU();
  for (size_t piece : {size_t{4096}, size_t{5000}}) {  // 5000: later pieces are unaligned
    detail::CudaTuning t = tuning();
    t.max_piece = piece;
    t.threads = 128;
    t.ctas_per_sm = 1;
    auto e = TransferEngine::create(options(t));
    ASSERT_TRUE(e.ok());
    round_trip(**e, Host{"pinned", true}, 1024, 4096);  // 128 KiB chunks
  }
}

// The Warp kernel rounds a thread count up to whole warps; the others take it as it is.
TEST_P(TransferGpu, ThreadCountsThatAreNotWholeWarps) {
  KVBM_REQUIRE_GPU();
  for (unsigned threads : {1u, 33u, 1000u}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    detail::CudaTuning t = tuning();
    t.threads = threads;
    t.ctas_per_sm = 1;
    auto e = TransferEngine::create(options(t));
    ASSERT_TRUE(e.ok());
    round_trip(**e, Host{"pinned", true}, 16, 256);    // 2 KiB chunks
    round_trip(**e, Host{"pinned", true}, 1024, 256);  // 128 KiB chunks
  }
}

TEST_P(TransferGpu, UnalignedChunksTakeTheByteLoop) {
  KVBM_REQUIRE_GPU();
  auto e = TransferEngine::create(options());
  ASSERT_TRUE(e.ok());
  LayoutConfig c = config(8, 3, 1);
  c.dtype_bytes = 1;
  c.inner_dim = 7;  // 21-byte chunks: nothing 16-byte aligned after block 0
  Layout src = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  Layout dev = make(c, LayoutKind::LayerSeparate, LayerOrder::OuterMajor, DeviceAllocator(0));
  Layout back = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  fill_all_blocks(src, 12);
  const std::vector<size_t> ids = {7, 1, 4}, mid = {0, 5, 6}, out = {2, 3, 1};
  ASSERT_TRUE(e.value()->copy(src, ids, dev, mid)->wait(30s).ok());
  ASSERT_TRUE(e.value()->copy(dev, mid, back, out)->wait(30s).ok());
  EXPECT_EQ(check_blocks(back, out, ids, 12), "");
}

TEST_P(TransferGpu, ManyRequestsReuseTheChunkTables) {
  KVBM_REQUIRE_GPU();
  auto e = TransferEngine::create(options());
  ASSERT_TRUE(e.ok());
  const LayoutConfig c = config(64, 16, 256);
  Layout src = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  Layout dev = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DeviceAllocator(0));
  Layout back = make(c, LayoutKind::LayerSeparate, LayerOrder::BlockMajor, PinnedAllocator());
  fill_all_blocks(src, 13);
  std::vector<size_t> ids(64), rev(64);
  for (size_t i = 0; i < 64; ++i) ids[i] = i, rev[i] = 63 - i;
  std::vector<Transfer> inflight;
  for (int i = 0; i < 10; ++i) {  // more requests than table slots, none waited yet
    auto t = e.value()->copy(src, ids, dev, rev);
    ASSERT_TRUE(t.ok());
    inflight.push_back(std::move(*t));
  }
  for (auto& t : inflight) ASSERT_TRUE(t.wait(30s).ok());
  ASSERT_TRUE(e.value()->copy(dev, rev, back, ids)->wait(30s).ok());
  EXPECT_EQ(check_blocks(back, ids, ids, 13), "");
}

// Thousands of blocks in one request, in one launch: every block lands.
TEST_P(TransferGpu, ThousandsOfBlocksInOneRequest) {
  KVBM_REQUIRE_GPU();
  auto e = TransferEngine::create(options());
  ASSERT_TRUE(e.ok());
  LayoutConfig c = config(5000, 1, 16);  // 128-byte chunks, 8 per block
  Layout src = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  Layout dev = make(c, LayoutKind::LayerSeparate, LayerOrder::OuterMajor, DeviceAllocator(0));
  Layout back = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  fill_all_blocks(src, 14);
  for (size_t n : {size_t{2048}, size_t{2049}, size_t{5000}}) {
    SCOPED_TRACE(std::to_string(n) + " blocks");
    std::vector<size_t> ids(n), mid(n), out(n);
    for (size_t i = 0; i < n; ++i) {
      ids[i] = (i * 7 + n) % 5000;  // 7 is prime to 5000: distinct ids
      mid[i] = 4999 - i;
      out[i] = i;
    }
    std::memset(back.region(0).data(), 0, back.region(0).size());
    ASSERT_TRUE(e.value()->copy(src, ids, dev, mid)->wait(30s).ok());
    ASSERT_TRUE(e.value()->copy(dev, mid, back, out)->wait(30s).ok());
    EXPECT_EQ(check_blocks(back, out, ids, 14), "");
  }
}

// Pinned <-> GPU through the copy engines (one cudaMemcpyBatchAsync per request).
TEST(TransferGpuHostEngine, BatchCopiesEveryChunkOfScatteredBlocks) {
  KVBM_REQUIRE_GPU();
  auto e = forced_engine(CudaHostEngine::Batch);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->cuda_host_engine(0, true, 16 << 10).value(), CudaHostEngine::Batch);
  round_trips_of_every_shape(*e);
}

// Both engines at once: the kernel's share of the blocks on its own stream, the copy
// engines the rest; every byte of every shape checked.
TEST(TransferGpuHostEngine, SplitCopiesEveryBlockOfBothParts) {
  KVBM_REQUIRE_GPU();
  auto e = forced_engine(CudaHostEngine::Split);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->cuda_host_engine(0, false, 64 << 10).value(), CudaHostEngine::Split);
  round_trips_of_every_shape(*e);
}

// Requests of several gather slices whose chunks (larger than a piece) straddle the slices'
// edges, twice, so that every slice is reused: 384,000-byte chunks, 3 MB blocks; 24 blocks
// fill 5 slices of 16 MiB.
void gather_rounds(TransferEngine& e) {
  const LayoutConfig c = config(24, 3000, 256);
  Layout src = make(c, LayoutKind::LayerSeparate, LayerOrder::OuterMajor, PinnedAllocator());
  Layout dev = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DeviceAllocator(0));
  Layout back = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
  fill_all_blocks(src, 15);
  std::vector<size_t> ids(24), mid(24);
  for (size_t i = 0; i < 24; ++i) ids[i] = (i * 5) % 24, mid[i] = 23 - i;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::memset(back.region(0).data(), 0, back.region(0).size());
    auto t = e.copy(src, ids, dev, mid);
    ASSERT_TRUE(t.ok()) << t.error().to_string();
    ASSERT_TRUE(t->wait(30s).ok());
    ASSERT_TRUE(e.copy(dev, mid, back, ids)->wait(30s).ok());
    EXPECT_EQ(check_blocks(back, ids, ids, 15), "");
  }
}

// Host -> GPU through a CPU gather into pinned staging, one DMA per slice and a scatter
// kernel (GPU -> host forced to it takes the kernel): every shape, and gather_rounds.
TEST(TransferGpuHostEngine, GatherCopiesEveryChunkAcrossSlices) {
  KVBM_REQUIRE_GPU();
  auto e = forced_engine(CudaHostEngine::Gather);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->cuda_host_engine(0, true, 16 << 10).value(), CudaHostEngine::Gather);
  round_trips_of_every_shape(*e);
  gather_rounds(*e);
}

// The gather with the kernel beside it: the kernel copies the first share of the blocks on
// its own stream while the host threads gather the rest; every byte of both parts checked.
TEST(TransferGpuHostEngine, GatherWithTheKernelBesideCopiesEveryBlockOfBothParts) {
  KVBM_REQUIRE_GPU();
  auto tuning = std::make_shared<detail::CudaTuning>();
  tuning->gather_kernel_share = 0.4;
  auto e = forced_engine(CudaHostEngine::Gather, tuning);
  ASSERT_NE(e, nullptr);
  round_trips_of_every_shape(*e);
  gather_rounds(*e);
}

// The choice measured on the machine: one per direction and chunk class, kept.
TEST(TransferGpuHostEngine, AutoMeasuresAndKeepsAChoicePerDirectionAndSize) {
  KVBM_REQUIRE_GPU();
  auto e = TransferEngine::create();
  ASSERT_TRUE(e.ok());
  for (bool to_device : {true, false}) {
    for (size_t chunk : {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20, size_t{8} << 20}) {
      auto engine = (*e)->cuda_host_engine(0, to_device, chunk);
      ASSERT_TRUE(engine.ok()) << engine.error().to_string();
      EXPECT_NE(*engine, CudaHostEngine::Auto);
      EXPECT_EQ((*e)->cuda_host_engine(0, to_device, chunk).value(), *engine);  // kept
    }
  }
  round_trip(**e, Host{"pinned", true}, 16, 256);
  round_trip(**e, Host{"pinned", true}, 1024, 4096);
  EXPECT_FALSE((*e)->cuda_host_engine(99, true, 4096).ok());
}

// host -> disk (File), disk -> device and device -> disk (Staged, under test), disk -> host
// (File), every byte checked; staging buffers of the default size and smaller than a chunk.
TEST(TransferGpuStaged, DiskToDeviceAndBack) {
  KVBM_REQUIRE_GPU();
  testing::TempDir dir;
  struct Case {
    size_t page, alignment;
  };
  // 384-byte chunks at odd file offsets (buffered I/O), 2 KiB chunks, 128 KiB chunks aligned
  // for direct I/O.
  for (const Case& k : {Case{3, 1}, Case{16, 256}, Case{1024, 4096}}) {
    for (size_t staging : {TransferEngineOptions{}.staging_bytes, size_t{8} << 10}) {
      SCOPED_TRACE("page " + std::to_string(k.page) + " alignment " + std::to_string(k.alignment) +
                   " staging " + std::to_string(staging));
      TransferEngineOptions o;
      o.staging_bytes = staging;
      auto e = TransferEngine::create(o);
      ASSERT_TRUE(e.ok());
      const LayoutConfig c = config(16, k.page, k.alignment);
      Layout src = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, PinnedAllocator());
      Layout d1 =
          make(c, LayoutKind::LayerSeparate, LayerOrder::OuterMajor, DiskAllocator(dir.path()));
      Layout g = make(config(24, k.page, 256), LayoutKind::LayerSeparate, LayerOrder::BlockMajor,
                      DeviceAllocator(0));
      Layout d2 =
          make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DiskAllocator(dir.path()));
      Layout back = make(c, LayoutKind::LayerSeparate, LayerOrder::BlockMajor, SystemAllocator());
      fill_all_blocks(src, 14);
      std::vector<size_t> all(16);
      for (size_t i = 0; i < 16; ++i) all[i] = i;
      ASSERT_TRUE(e.value()->copy(src, all, d1, all)->wait(30s).ok());
      // Scattered ids, then runs of consecutive ones (chunks coalesced beyond the staging).
      const std::vector<size_t> s = {3, 15, 0, 7, 8, 9, 1, 2, 4, 5, 6};
      const std::vector<size_t> mid = {23, 0, 5, 6, 7, 12, 2, 13, 14, 15, 16};
      const std::vector<size_t> out = {0, 2, 4, 6, 8, 10, 15, 11, 12, 13, 14};
      auto in = e.value()->copy(d1, s, g, mid);
      ASSERT_TRUE(in.ok()) << in.error().to_string();
      EXPECT_EQ(in->path(), TransferPath::Staged);
      auto st = in->wait(30s);
      ASSERT_TRUE(st.ok()) << st.error().to_string();
      auto off = e.value()->copy(g, mid, d2, out);
      ASSERT_TRUE(off.ok()) << off.error().to_string();
      EXPECT_EQ(off->path(), TransferPath::Staged);
      st = off->wait(30s);
      ASSERT_TRUE(st.ok()) << st.error().to_string();
      ASSERT_TRUE(e.value()->copy(d2, out, back, out)->wait(30s).ok());
      EXPECT_EQ(check_blocks(back, out, s, 14), "");
    }
  }
}

// A disk source cut short: the read past its end fails the Disk -> Device Transfer with the
// file's offset; the engine goes on.
TEST(TransferGpuStaged, ReadPastEndOfFile) {
  KVBM_REQUIRE_GPU();
  testing::TempDir dir;
  TransferEngineOptions o;
  o.staging_bytes = 8 << 10;
  auto e = TransferEngine::create(o);
  ASSERT_TRUE(e.ok());
  const LayoutConfig c = config(4, 32, 4096);  // 4 KiB chunks, 32 KiB blocks
  Layout disk =
      make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DiskAllocator(dir.path()));
  Layout g = make(c, LayoutKind::FullyContiguous, LayerOrder::BlockMajor, DeviceAllocator(0));
  ASSERT_EQ(::ftruncate(static_cast<int>(disk.storage_type().id), 40960), 0);
  auto t = e.value()->copy(disk, std::vector<size_t>{0, 1, 2}, g, std::vector<size_t>{0, 1, 2});
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_ERROR(t->wait(30s), ErrorCode::Io, "read past end of file at offset 40960");
  auto ok = e.value()->copy(disk, std::vector<size_t>{0}, g, std::vector<size_t>{3});
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->wait(30s).ok());
}

}  // namespace
}  // namespace kvbm
