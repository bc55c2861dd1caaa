// The block transfer engine on CPU tiers: host pairs across every layout kind, files through
// io_uring, a peer's layout through two agents, and every validation error.
#include "kvbm/transfer.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <tuple>

#include "copy/host_pool.h"
#include "copy/stream_copy.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "support/block_pattern.h"
#include "support/test_support.h"
#include "transfer/cuda_tuning.h"

namespace kvbm {
namespace {

using namespace std::chrono_literals;
using testing::check_blocks;
using testing::fill_all_blocks;

LayoutConfig config(size_t blocks, size_t alignment = 1, size_t page = 4, size_t outer = 2) {
  LayoutConfig c;
  c.num_blocks = blocks;
  c.num_layers = 3;
  c.outer_dim = outer;
  c.page_size = page;
  c.inner_dim = 8;
  c.dtype_bytes = 2;
  c.alignment = alignment;
  return c;
}

struct Shape {
  LayoutKind kind;
  LayerOrder order;
  const char* name;
};
const Shape kShapes[] = {{LayoutKind::FullyContiguous, LayerOrder::BlockMajor, "FC"},
                         {LayoutKind::LayerSeparate, LayerOrder::BlockMajor, "LS/block"},
                         {LayoutKind::LayerSeparate, LayerOrder::OuterMajor, "LS/outer"}};

std::unique_ptr<TransferEngine> engine(TransferEngineOptions o = {}) {
  auto e = TransferEngine::create(o);
  EXPECT_TRUE(e.ok()) << e.error().to_string();
  return e.ok() ? std::move(*e) : nullptr;
}

Layout host_layout(const LayoutConfig& c, const Shape& s) {
  auto l = Layout::allocate(c, s.kind, SystemAllocator(), s.order);
  EXPECT_TRUE(l.ok()) << l.error().to_string();
  return std::move(*l);
}

Layout disk_layout(const LayoutConfig& c, const Shape& s, const testing::TempDir& dir) {
  auto l = Layout::allocate(c, s.kind, DiskAllocator(dir.path()), s.order);
  EXPECT_TRUE(l.ok()) << l.error().to_string();
  return std::move(*l);
}

// Copies and waits; the copy's error (from copy() or from the Transfer) if any.
Status copy_and_wait(TransferEngine& e, const Layout& src, std::span<const size_t> src_ids,
                     const Layout& dst, std::span<const size_t> dst_ids) {
  auto t = e.copy(src, src_ids, dst, dst_ids);
  if (!t) return t.error();
  return t->wait(30s);
}

// A storage with an address and no bytes, for validation paths that never copy.
class FakeStorage final : public Storage {
 public:
  FakeStorage(size_t size, StorageType type) : size_(size), type_(type) {}
  StorageType type() const override { return type_; }
  uint64_t addr() const override { return 1 << 20; }
  size_t size() const override { return size_; }

 private:
  size_t size_;
  StorageType type_;
};

Layout fake_layout(const LayoutConfig& c, StorageType type) {
  auto sizes = *Layout::required_sizes(c, LayoutKind::FullyContiguous);
  std::vector<std::unique_ptr<Storage>> r;
  r.push_back(std::make_unique<FakeStorage>(sizes[0], type));
  return std::move(*Layout::create(c, LayoutKind::FullyContiguous, std::move(r)));
}

TEST(TransferEngine, RejectsBadOptions) {
  TransferEngineOptions o;
  o.host_threads = 5000;
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "host_threads 5000");
  o = {};
  o.uring_queue_depth = 0;
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "uring_queue_depth 0");
  auto tuned = [](auto set) {
    detail::CudaTuning t;
    set(t);
    TransferEngineOptions opts;
    opts.cuda_tuning = std::make_shared<const detail::CudaTuning>(t);
    return opts;
  };
  o = tuned([](detail::CudaTuning& t) { t.threads = 2048; });
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "threads 2048");
  o = tuned([](detail::CudaTuning& t) { t.max_piece = 0; });
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "max piece 0");
  o = tuned([](detail::CudaTuning& t) { t.kernel = static_cast<CudaCopyKernel>(7); });
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "cuda_kernel 7");
  o = {};
  o.cuda_host_engine = static_cast<CudaHostEngine>(5);
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "cuda_host_engine 5");
  for (size_t staging : {size_t{0}, size_t{4096}, size_t{12288}, size_t{128} << 30}) {
    o = {};
    o.staging_bytes = staging;
    EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument,
                 "staging_bytes " + std::to_string(staging));
  }
  EXPECT_STREQ(to_string(CudaCopyKernel::Warp), "warp");
  EXPECT_STREQ(to_string(TransferPath::Staged), "staged");
  EXPECT_STREQ(to_string(CudaHostEngine::Batch), "batch");
  EXPECT_STREQ(to_string(CudaHostEngine::Split), "split");
  EXPECT_STREQ(to_string(CudaHostEngine::Gather), "gather");
  auto e = engine();
  if (!cuda_device_count()) {  // no GPU: asking for its engine says why, as a copy would
    EXPECT_EQ(e->cuda_host_engine(0, true, 4096).code(), ErrorCode::DeviceUnavailable);
  }
  EXPECT_EQ(e->host_threads(), std::max(1u, std::thread::hardware_concurrency()));
}

// Every pair of layout kinds, with different block counts and alignments on each side,
// scattered ids, one thread and many: every chunk lands where it belongs, and blocks not
// named keep their bytes.
TEST(TransferHost, EveryPairOfLayoutKinds) {
  for (size_t threads : {size_t{1}, size_t{4}}) {
    TransferEngineOptions o;
    o.host_threads = threads;
    auto e = engine(o);
    for (const Shape& from : kShapes) {
      for (const Shape& to : kShapes) {
        SCOPED_TRACE(std::string(from.name) + " -> " + to.name + ", threads " +
                     std::to_string(threads));
        Layout src = host_layout(config(10, 1), from);
        Layout dst = host_layout(config(13, 256), to);
        fill_all_blocks(src, 1);
        fill_all_blocks(dst, 2);
        const std::vector<size_t> s = {7, 0, 3, 4, 9}, d = {1, 12, 5, 6, 0};
        auto t = e->copy(src, s, dst, d);
        ASSERT_TRUE(t.ok()) << t.error().to_string();
        EXPECT_EQ(t->path(), TransferPath::Host);
        EXPECT_EQ(t->bytes(), 5u * 3 * 2 * 4 * 8 * 2);
        ASSERT_TRUE(t->wait(10s).ok());
        EXPECT_TRUE(t->ready());
        EXPECT_EQ(check_blocks(dst, d, s, 1), "");
        const std::vector<size_t> untouched = {2, 3, 4, 7, 8, 9, 10, 11};
        EXPECT_EQ(check_blocks(dst, untouched, untouched, 2), "");
      }
    }
  }
}

TEST(TransferHost, CoalescesAdjacentBlocksAndSplitsLargeOnes) {
  auto e = engine();
  // Contiguous layouts, consecutive ids: one chunk for all of them.
  LayoutConfig big = config(8, 1, 4096);  // 64 KiB chunks: parts span chunk boundaries
  Layout src = host_layout(big, kShapes[0]);
  Layout dst = host_layout(big, kShapes[0]);
  fill_all_blocks(src, 3);
  const std::vector<size_t> ids = {2, 3, 4, 5};
  auto t = e->copy(src, ids, dst, ids);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->wait(10s).ok());
  EXPECT_EQ(t->chunks(), 1u);
  EXPECT_EQ(check_blocks(dst, ids, ids, 3), "");
  // Layer-separate destination: K and V of a (block, layer) are adjacent on both sides.
  Layout lsd = host_layout(big, kShapes[1]);
  auto t2 = e->copy(src, ids, lsd, ids);
  ASSERT_TRUE(t2.ok());
  ASSERT_TRUE(t2->wait(10s).ok());
  EXPECT_EQ(t2->chunks(), 4u * 3);
  EXPECT_EQ(check_blocks(lsd, ids, ids, 3), "");
  // Layer-separate on both sides: one chunk per layer (block-major), per (layer, outer)
  // (outer-major).
  Layout lsd2 = host_layout(big, kShapes[1]);
  auto t3 = e->copy(lsd, ids, lsd2, ids);
  ASSERT_TRUE(t3.ok());
  ASSERT_TRUE(t3->wait(10s).ok());
  EXPECT_EQ(t3->chunks(), 3u);
  EXPECT_EQ(check_blocks(lsd2, ids, ids, 3), "");
  Layout om1 = host_layout(big, kShapes[2]);
  Layout om2 = host_layout(big, kShapes[2]);
  fill_all_blocks(om1, 8);
  auto t4 = e->copy(om1, ids, om2, ids);
  ASSERT_TRUE(t4.ok());
  ASSERT_TRUE(t4->wait(10s).ok());
  EXPECT_EQ(t4->chunks(), 3u * 2);
  EXPECT_EQ(check_blocks(om2, ids, ids, 8), "");
}

TEST(StreamCopy, EveryAlignmentAndTail) {
  std::vector<unsigned char> src(4096 + 64), dst(4096 + 64);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{63}, size_t{64}, size_t{65},
                   size_t{1000}, size_t{4096}}) {
    for (size_t so = 0; so < 17; so += 3) {
      for (size_t d_off = 0; d_off < 33; d_off += 5) {
        std::fill(dst.begin(), dst.end(), 0xEE);
        detail::stream_copy(dst.data() + d_off, src.data() + so, n);
        detail::stream_fence();
        ASSERT_EQ(std::memcmp(dst.data() + d_off, src.data() + so, n), 0)
            << n << " bytes, src +" << so << ", dst +" << d_off;
        for (size_t i = 0; i < dst.size(); ++i) {
          if (i < d_off || i >= d_off + n) {
            ASSERT_EQ(dst[i], 0xEE) << "byte " << i << " written";
          }
        }
      }
    }
  }
}

// Jobs of 32 MiB and more take the streaming-store path: odd chunk sizes (not a multiple of
// 16 bytes), shuffled ids, every byte checked.
TEST(TransferHost, LargeJobsWithOddChunksUseStreamingStores) {
  LayoutConfig c = config(64, 1, 4096);
  c.inner_dim = 35;
  c.dtype_bytes = 1;  // 143360-byte chunks (35 x 4096), 3 layers x 2: ~52 MiB in all
  TransferEngineOptions o;
  o.host_threads = 3;
  auto e = engine(o);
  Layout src = host_layout(c, kShapes[0]);
  Layout dst = host_layout(c, kShapes[2]);
  fill_all_blocks(src, 21);
  std::vector<size_t> s(64), d(64);
  for (size_t i = 0; i < 64; ++i) {
    s[i] = i;
    d[i] = (i * 37 + 5) % 64;
  }
  auto t = e->copy(src, s, dst, d);
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  ASSERT_GE(t->bytes(), 32u << 20);
  ASSERT_TRUE(t->wait(30s).ok());
  EXPECT_EQ(check_blocks(dst, d, s, 21), "");
}

// A host request of 4096 chunks or more goes to the pool as blocks, each part working out
// its own chunks: between every pair of layout shapes, ids shuffled, every block lands, and
// the chunks counted are those the parts copied (sequential ids coalesce within parts).
TEST(TransferHost, RequestsOfManyChunksGoAsBlocks) {
  auto e = engine({.host_threads = 3});
  const size_t blocks = 1024;  // x 3 layers x 2 outer = 6144 chunks of 64 bytes
  std::vector<size_t> shuffled(blocks), seq(blocks);
  for (size_t i = 0; i < blocks; ++i) {
    shuffled[i] = (i * 389 + 7) % blocks;  // 389 is prime to 1024: a permutation
    seq[i] = i;
  }
  for (const Shape& from : kShapes) {
    for (const Shape& to : kShapes) {
      SCOPED_TRACE(std::string(from.name) + " -> " + to.name);
      Layout src = host_layout(config(blocks), from);
      Layout dst = host_layout(config(blocks), to);
      fill_all_blocks(src, 31);
      auto t = e->copy(src, seq, dst, shuffled);
      ASSERT_TRUE(t.ok()) << t.error().to_string();
      ASSERT_TRUE(t->wait(30s).ok());
      EXPECT_EQ(check_blocks(dst, shuffled, seq, 31), "");
      EXPECT_GT(t->chunks(), 0u);
      EXPECT_LE(t->chunks(), blocks * 6);
    }
  }
  // The same shape and ids on both sides: each part's blocks are one run per region.
  Layout a = host_layout(config(blocks), kShapes[0]);
  Layout b = host_layout(config(blocks), kShapes[0]);
  fill_all_blocks(a, 32);
  auto t = e->copy(a, seq, b, seq);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->wait(30s).ok());
  EXPECT_EQ(check_blocks(b, seq, seq, 32), "");
  EXPECT_EQ(t->chunks(), 3u) << "one run per part, a part per thread";
}

// The host pool's parts: one per thread at least (none under 64 KiB), and about 1 MiB each
// in large jobs, which the threads take in turn; parts cut through chunks and every byte
// still lands once.
TEST(HostPool, LargeJobsGoInPartsOfAboutAMiB) {
  const size_t n = (5 << 20) + 17;
  std::vector<char> src(n), dst(n, 0);
  detail::HostPool pool(2);  // destroyed first: it finishes its jobs while the buffers live
  testing::fill_pattern(src.data(), n, 3);
  auto at = [](std::vector<char>& v, size_t off) {
    return reinterpret_cast<uint64_t>(v.data() + off);
  };
  // Three chunks, the second and third swapped in the destination.
  const size_t a = 1234567, b = 3333333;
  std::vector<Chunk> chunks = {{at(src, 0), at(dst, 0), a},
                               {at(src, a), at(dst, a + n - b), b - a},
                               {at(src, b), at(dst, a), n - b}};
  auto job = pool.submit(chunks, n);
  EXPECT_EQ(job->parts(), 5u);
  ASSERT_TRUE(job->wait_for(10s));
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), a), 0);
  EXPECT_EQ(std::memcmp(dst.data() + a + n - b, src.data() + a, b - a), 0);
  EXPECT_EQ(std::memcmp(dst.data() + a, src.data() + b, n - b), 0);

  // Small jobs: fewer parts.
  for (auto [bytes, parts] : {std::pair<size_t, size_t>{100 << 10, 1}, {1 << 20, 2}, {0, 1}}) {
    auto small = pool.submit({{at(src, 0), at(dst, 0), bytes}}, bytes);
    EXPECT_EQ(small->parts(), parts) << bytes << " bytes";
    EXPECT_TRUE(small->wait_for(10s));
  }
}

TEST(TransferHost, ManyRequestsInFlightFromManyThreads) {
  auto e = engine();
  Layout src = host_layout(config(64), kShapes[0]);
  fill_all_blocks(src, 4);
  std::vector<Layout> dsts;
  for (int i = 0; i < 4; ++i) dsts.push_back(host_layout(config(64), kShapes[2]));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      std::vector<size_t> ids(64);
      for (size_t b = 0; b < 64; ++b) ids[b] = (b * 7 + i) % 64;
      for (int round = 0; round < 20; ++round) {
        auto t = e->copy(src, ids, dsts[i], ids);
        if (!t || !t->wait(10s)) failures++;
      }
      if (check_blocks(dsts[i], ids, ids, 4) != "") failures++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(TransferValidation, EveryError) {
  auto e = engine();
  Layout a = host_layout(config(4), kShapes[0]);
  Layout b = host_layout(config(6), kShapes[1]);
  const std::vector<size_t> one = {0}, two = {0, 1};
  EXPECT_ERROR(e->copy(a, two, b, one), ErrorCode::InvalidArgument,
               "2 source ids, 1 destination ids");
  EXPECT_ERROR(e->copy(a, {}, b, {}), ErrorCode::InvalidArgument, "no blocks");
  EXPECT_ERROR(e->copy(a, std::vector<size_t>{0, 1}, b, std::vector<size_t>{3, 3}),
               ErrorCode::InvalidArgument, "destination block id 3 appears more than once");
  EXPECT_ERROR(e->copy(a, std::vector<size_t>{0, 4}, b, two), ErrorCode::OutOfBounds,
               "source block id 4 (entry 1) out of range (num_blocks 4)");
  EXPECT_ERROR(e->copy(a, two, b, std::vector<size_t>{6, 0}), ErrorCode::OutOfBounds,
               "destination block id 6 (entry 0) out of range (num_blocks 6)");
  Layout other = host_layout(config(4, 1, 8), kShapes[0]);  // page 8 vs 4
  EXPECT_ERROR(e->copy(a, one, other, one), ErrorCode::InvalidArgument,
               "incompatible blocks: source layers 3 outer 2 page 4");
  Layout k_only = host_layout(config(4, 1, 4, 1), kShapes[0]);
  EXPECT_ERROR(e->copy(a, one, k_only, one), ErrorCode::InvalidArgument, "outer 1");
  EXPECT_ERROR(e->copy(a, two, a, std::vector<size_t>{1, 2}), ErrorCode::InvalidArgument,
               "block 1 is both a source and a destination");
  // Within one layout, disjoint blocks are fine.
  fill_all_blocks(a, 5);
  auto ok = e->copy(a, two, a, std::vector<size_t>{2, 3});
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  ASSERT_TRUE(ok->wait(10s).ok());
  EXPECT_EQ(check_blocks(a, std::vector<size_t>{2, 3}, two, 5), "");

  // Every tier pair's path; two GPUs have none.
  Layout d1 = fake_layout(config(4), StorageType::disk(100));
  Layout d2 = fake_layout(config(4), StorageType::disk(101));
  Layout g0 = fake_layout(config(4), StorageType::device(0));
  Layout g1 = fake_layout(config(4), StorageType::device(1));
  EXPECT_ERROR(e->path_for(g0, g1), ErrorCode::Unsupported,
               "no block copy path from Device(0) to Device(1) (different GPUs)");
  EXPECT_ERROR(e->copy(g0, one, g1, one), ErrorCode::Unsupported, "different GPUs");
  EXPECT_EQ(*e->path_for(a, g0), TransferPath::Cuda);
  EXPECT_EQ(*e->path_for(a, d1), TransferPath::File);
  EXPECT_EQ(*e->path_for(d1, d2), TransferPath::Staged);
  EXPECT_EQ(*e->path_for(d1, g0), TransferPath::Staged);
  EXPECT_EQ(*e->path_for(g0, d1), TransferPath::Staged);
  if (!cuda_device_count()) {  // without a GPU, the CUDA and Staged paths say so at once
    EXPECT_ERROR(e->copy(a, one, g0, one), ErrorCode::DeviceUnavailable, "");
    EXPECT_ERROR(e->copy(d1, one, g0, one), ErrorCode::DeviceUnavailable, "");
    EXPECT_ERROR(e->copy(g0, one, d1, one), ErrorCode::DeviceUnavailable, "");
  }
}

TEST(TransferFile, HostToDiskAndBack) {
  testing::TempDir dir;
  auto e = engine();
  for (const Shape& shape : kShapes) {
    SCOPED_TRACE(shape.name);
    for (size_t alignment : {size_t{1}, size_t{4096}}) {  // buffered and O_DIRECT ops
      LayoutConfig c = config(6, alignment, 256);         // 8 KiB chunks
      Layout src = host_layout(c, kShapes[0]);
      Layout back = host_layout(c, kShapes[2]);
      Layout disk = disk_layout(c, shape, dir);
      fill_all_blocks(src, 6);
      const std::vector<size_t> s = {5, 1, 2}, d = {0, 3, 4}, b = {1, 5, 0};
      auto w = e->copy(src, s, disk, d);
      ASSERT_TRUE(w.ok()) << w.error().to_string();
      EXPECT_EQ(w->path(), TransferPath::File);
      ASSERT_TRUE(w->wait(10s).ok());
      auto r = e->copy(disk, d, back, b);
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      auto st = r->wait(10s);
      ASSERT_TRUE(st.ok()) << st.error().to_string();
      EXPECT_TRUE(r->ready());
      EXPECT_EQ(check_blocks(back, b, s, 6), "");
    }
  }
}

// Consecutive blocks coalesce into one run of about 4 MiB, which goes to the file as 1 MiB
// ops in flight together, the last one shorter and, at 1-byte alignment, unaligned.
TEST(TransferFile, LongRunsGoInPiecesAndComeBackWhole) {
  testing::TempDir dir;
  auto e = engine();
  for (size_t alignment : {size_t{1}, size_t{4096}}) {
    SCOPED_TRACE(alignment);
    LayoutConfig c = config(16, alignment, 4100);  // 65600-byte chunks, 16 blocks
    Layout src = host_layout(c, kShapes[0]);
    Layout back = host_layout(c, kShapes[0]);
    Layout disk = disk_layout(c, kShapes[0], dir);
    fill_all_blocks(src, 8);
    std::vector<size_t> all(16);
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    auto w = e->copy(src, all, disk, all);
    ASSERT_TRUE(w.ok()) << w.error().to_string();
    ASSERT_TRUE(w->wait(10s).ok());
    auto r = e->copy(disk, all, back, all);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    auto st = r->wait(10s);
    ASSERT_TRUE(st.ok()) << st.error().to_string();
    EXPECT_EQ(check_blocks(back, all, all, 8), "");
  }
}

// Host layouts registered with the engine are fixed buffers of the File path's io_uring:
// copies through them land as before and go as fixed-buffer I/O; registration errors, an
// explicit deregistration, and either the layout or the engine going first.
TEST(TransferFile, RegisteredHostLayoutsGoAsFixedBuffers) {
  testing::TempDir dir;
  auto e = engine();
  const LayoutConfig c = config(16, 4096, 4100);  // 65600-byte chunks, O_DIRECT where aligned
  Layout src = host_layout(c, kShapes[0]);
  Layout back = host_layout(c, kShapes[2]);  // one region per layer
  Layout disk = disk_layout(c, kShapes[1], dir);
  fill_all_blocks(src, 12);
  EXPECT_EQ(e->file_fixed_ios(), 0u);
  ASSERT_TRUE(e->register_host_layout(src).ok());
  ASSERT_TRUE(e->register_host_layout(back).ok());
  for (const Layout* l : {&src, &back}) {
    for (size_t i = 0; i < l->num_regions(); ++i) {
      const auto* r = dynamic_cast<const RegisterableStorage*>(&l->region(i));
      ASSERT_NE(r, nullptr);
      EXPECT_TRUE(r->is_registered(TransferEngine::kFileRegistrationKey));
    }
  }
  const std::vector<size_t> s = {3, 0, 15, 7}, d = {1, 2, 3, 4}, b = {9, 8, 0, 15};
  size_t ops = 0;  // the coalesced chunks, each one op (none over 1 MiB)
  for (auto [from, to, from_ids, to_ids] :
       {std::tuple{&src, &disk, &s, &d}, {&disk, &back, &d, &b}}) {
    auto t = e->copy(*from, *from_ids, *to, *to_ids);
    ASSERT_TRUE(t.ok()) << t.error().to_string();
    ASSERT_TRUE(t->wait(10s).ok());
    ops += t->chunks();
  }
  EXPECT_EQ(check_blocks(back, b, s, 12), "");
  EXPECT_GE(e->file_fixed_ios(), ops) << "every op as fixed-buffer I/O";

  // Errors: registered already, not host memory.
  EXPECT_ERROR(e->register_host_layout(src), ErrorCode::AlreadyRegistered, "region 0");
  EXPECT_ERROR(e->register_host_layout(disk), ErrorCode::InvalidArgument, "not Disk");
  Layout gpu = fake_layout(c, StorageType::device(0));
  EXPECT_ERROR(e->register_host_layout(gpu), ErrorCode::InvalidArgument, "host memory");
  Layout unregisterable = fake_layout(c, StorageType::system());  // no registration map
  EXPECT_ERROR(e->register_host_layout(unregisterable), ErrorCode::InvalidArgument,
               "cannot be registered");

  // Deregistered, a region's copies go as plain I/O and still land.
  auto& r0 = dynamic_cast<RegisterableStorage&>(back.region(0));
  ASSERT_TRUE(r0.deregister(TransferEngine::kFileRegistrationKey).ok());
  std::vector<char> zero(back.region(0).size(), 0);
  std::memcpy(back.region(0).data(), zero.data(), zero.size());
  ASSERT_TRUE(copy_and_wait(*e, disk, d, back, b).ok());
  EXPECT_EQ(check_blocks(back, b, s, 12), "");

  // The layout goes first, then a new one at what may be the same address: no stale buffer.
  { Layout gone = std::move(src); }
  Layout fresh = host_layout(c, kShapes[0]);
  ASSERT_TRUE(copy_and_wait(*e, disk, d, fresh, s).ok());
  EXPECT_EQ(check_blocks(fresh, s, s, 12), "");
  // The engine goes first: the layouts' registrations end with nothing left to undo.
  ASSERT_TRUE(e->register_host_layout(fresh).ok());
  e.reset();
}

TEST(TransferFile, IoErrorsComeBackThroughTheHandle) {
  auto e = engine();
  Layout host = host_layout(config(4), kShapes[0]);
  Layout bad = fake_layout(config(4), StorageType::disk(987654));  // no such fd
  auto t = e->copy(host, std::vector<size_t>{0}, bad, std::vector<size_t>{0});
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_ERROR(t->wait(10s), ErrorCode::Io, "987654");
  EXPECT_TRUE(t->ready());
}

// File requests in flight together share the engine's io_uring queue and finish on their
// own: every byte lands, and one failing request (a closed disk) fails alone.
TEST(TransferFile, RequestsInFlightTogetherFinishOnTheirOwn) {
  testing::TempDir dir;
  auto e = engine();
  const LayoutConfig c = config(16, 4096, 256);  // 8 KiB chunks, O_DIRECT where allowed
  Layout src = host_layout(c, kShapes[0]);
  Layout back = host_layout(c, kShapes[1]);
  fill_all_blocks(src, 12);
  std::vector<Layout> disks;
  for (int i = 0; i < 4; ++i) disks.push_back(disk_layout(c, kShapes[i % 3], dir));
  Layout bad = fake_layout(c, StorageType::disk(987655));  // no such fd
  std::vector<size_t> all(16);
  for (size_t i = 0; i < 16; ++i) all[i] = i;
  std::vector<Transfer> ts;
  for (int round = 0; round < 3; ++round) {
    for (auto& d : disks) {
      auto t = e->copy(src, all, d, all);
      ASSERT_TRUE(t.ok()) << t.error().to_string();
      ts.push_back(std::move(*t));
    }
  }
  auto failing = e->copy(src, all, bad, all);
  ASSERT_TRUE(failing.ok()) << failing.error().to_string();
  for (auto& t : ts) {
    auto st = t.wait(30s);
    EXPECT_TRUE(st.ok()) << st.error().to_string();
  }
  EXPECT_ERROR(failing->wait(30s), ErrorCode::Io, "987655");
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(copy_and_wait(*e, disks[i], all, back, all).ok());
    EXPECT_EQ(check_blocks(back, all, all, 12), "") << "disk " << i;
  }
}

// Disk -> Disk goes through the engine's host staging buffer. Each case: host -> disk A
// (File), A -> disk B (Staged, the copy under test), B -> host (File), every byte checked.
struct StagedCase {
  const char* name;
  LayoutConfig config;
  size_t staging_bytes;
};

void disk_to_disk(const StagedCase& k, const Shape& from, const Shape& to) {
  SCOPED_TRACE(std::string(k.name) + ": " + from.name + " -> " + to.name);
  testing::TempDir dir;
  TransferEngineOptions o;
  o.staging_bytes = k.staging_bytes;
  auto e = engine(o);
  const size_t n = k.config.num_blocks;
  Layout src = host_layout(k.config, kShapes[0]);
  Layout back = host_layout(k.config, kShapes[1]);
  Layout a = disk_layout(k.config, from, dir);
  Layout b = disk_layout(k.config, to, dir);
  fill_all_blocks(src, 7);
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  ASSERT_TRUE(copy_and_wait(*e, src, all, a, all).ok());
  // Scattered ids, then a run of consecutive ones (coalesced into chunks larger than a half
  // of a small staging buffer); block n - 1 of b is never written.
  const std::vector<size_t> s = {4, 0, 2, 1, 3, 5}, d = {0, 5, 1, 2, 3, 4};
  auto t = e->copy(a, s, b, d);
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_EQ(t->path(), TransferPath::Staged);
  EXPECT_EQ(t->bytes(),
            s.size() * k.config.num_layers * k.config.outer_dim * k.config.chunk_bytes());
  auto st = t->wait(30s);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_TRUE(t->ready());
  const std::vector<size_t> run = {0, 1, 2, 3, 4, 5}, at = {6, 7, 8, 9, 10, 11};
  st = copy_and_wait(*e, a, run, b, at);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  ASSERT_TRUE(copy_and_wait(*e, b, all, back, all).ok());
  EXPECT_EQ(check_blocks(back, d, s, 7), "");
  EXPECT_EQ(check_blocks(back, at, run, 7), "");
}

const StagedCase kStagedCases[] = {
    // 80-byte chunks at odd offsets: buffered I/O; many chunks per batch.
    {"unaligned", config(13, 1, 5), 64 << 10},
    // 4 KiB chunks, page-aligned: direct I/O where the file system allows it.
    {"aligned", config(13, 4096, 256), 64 << 10},
    // 16000-byte chunks through 4 KiB halves: every chunk split, unaligned tails.
    {"split unaligned", config(13, 1, 1000), 8 << 10},
    // 16 KiB chunks through 4 KiB halves, and runs of blocks coalesced far beyond that.
    {"split aligned", config(13, 4096, 1024), 8 << 10},
    // The default buffer: the whole request in one batch.
    {"default staging", config(13, 4096, 256), TransferEngineOptions{}.staging_bytes},
};

TEST(TransferStaged, DiskToDiskEveryPairOfLayoutKinds) {
  for (const StagedCase& k : kStagedCases) {
    for (const Shape& from : kShapes) {
      for (const Shape& to : kShapes) disk_to_disk(k, from, to);
    }
  }
}

// A source file cut short: the read past its end fails the Transfer, naming the file and
// the offset; a closed fd (no such fd) likewise.
TEST(TransferStaged, ReadErrorsComeBackThroughTheHandle) {
  testing::TempDir dir;
  TransferEngineOptions o;
  o.staging_bytes = 8 << 10;
  auto e = engine(o);
  const LayoutConfig c = config(4, 4096, 256);  // 4 KiB chunks, 24 KiB blocks
  Layout a = disk_layout(c, kShapes[0], dir);
  Layout b = disk_layout(c, kShapes[0], dir);
  const int fd = static_cast<int>(a.storage_type().id);
  ASSERT_EQ(::ftruncate(fd, 2 * 24576 + 4096), 0);
  auto t = e->copy(a, std::vector<size_t>{1, 2}, b, std::vector<size_t>{0, 1});
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_ERROR(t->wait(30s), ErrorCode::Io, "read past end of file at offset 53248");
  EXPECT_ERROR(t->wait(30s), ErrorCode::Io, "fd " + std::to_string(fd));
  EXPECT_TRUE(t->ready());

  Layout bad = fake_layout(config(4), StorageType::disk(987654));
  Layout ok = disk_layout(config(4), kShapes[0], dir);
  EXPECT_ERROR(copy_and_wait(*e, bad, std::vector<size_t>{0}, ok, std::vector<size_t>{0}),
               ErrorCode::Io, "read fd 987654 offset 1048576");
  EXPECT_ERROR(copy_and_wait(*e, ok, std::vector<size_t>{0}, bad, std::vector<size_t>{0}),
               ErrorCode::Io, "write fd 987654 offset 1048576");
  // The engine goes on after errors.
  Layout ok2 = disk_layout(config(4), kShapes[2], dir);
  EXPECT_TRUE(copy_and_wait(*e, ok, std::vector<size_t>{0}, ok2, std::vector<size_t>{3}).ok());
}

// Staged requests from several threads share the one staging buffer; each lands whole.
TEST(TransferStaged, ManyRequestsFromManyThreads) {
  testing::TempDir dir;
  TransferEngineOptions o;
  o.staging_bytes = 16 << 10;
  auto e = engine(o);
  const LayoutConfig c = config(16, 1, 300);  // 4800-byte chunks
  Layout host = host_layout(c, kShapes[0]);
  fill_all_blocks(host, 8);
  Layout src = disk_layout(c, kShapes[1], dir);
  std::vector<size_t> all(16);
  for (size_t i = 0; i < 16; ++i) all[i] = i;
  ASSERT_TRUE(copy_and_wait(*e, host, all, src, all).ok());
  std::vector<Layout> dsts;
  for (int i = 0; i < 4; ++i) dsts.push_back(disk_layout(c, kShapes[i % 3], dir));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      std::vector<size_t> ids(16);
      for (size_t b = 0; b < 16; ++b) ids[b] = (b * 5 + i) % 16;
      for (int round = 0; round < 5; ++round) {
        if (!copy_and_wait(*e, src, all, dsts[i], ids)) failures++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < 4; ++i) {
    std::vector<size_t> ids(16);
    for (size_t b = 0; b < 16; ++b) ids[b] = (b * 5 + i) % 16;
    Layout back = host_layout(c, kShapes[2]);
    ASSERT_TRUE(copy_and_wait(*e, dsts[i], ids, back, all).ok());
    EXPECT_EQ(check_blocks(back, all, all, 8), "") << "destination " << i;
  }
}

// Destroying a Transfer in flight waits for it: the copy is whole afterwards, and so is
// one queued behind it.
TEST(TransferStaged, DestroyingATransferInFlightWaits) {
  testing::TempDir dir;
  TransferEngineOptions o;
  o.staging_bytes = 8 << 10;
  auto e = engine(o);
  const LayoutConfig c = config(64, 4096, 1024);  // 6 MiB in 4 KiB batches
  Layout host = host_layout(c, kShapes[0]);
  fill_all_blocks(host, 9);
  Layout a = disk_layout(c, kShapes[0], dir);
  Layout b = disk_layout(c, kShapes[2], dir);
  std::vector<size_t> all(64), rev(64);
  for (size_t i = 0; i < 64; ++i) all[i] = i, rev[i] = 63 - i;
  ASSERT_TRUE(copy_and_wait(*e, host, all, a, all).ok());
  {
    auto first = e->copy(a, all, b, rev);
    ASSERT_TRUE(first.ok()) << first.error().to_string();
    auto second = e->copy(a, all, b, rev);
    ASSERT_TRUE(second.ok()) << second.error().to_string();
  }
  Layout back = host_layout(c, kShapes[1]);
  ASSERT_TRUE(copy_and_wait(*e, b, rev, back, all).ok());
  EXPECT_EQ(check_blocks(back, all, all, 9), "");
}

class TransferRemote : public ::testing::Test {
 protected:
  void SetUp() override {
    a = std::move(*xfer::Agent::create("a"));
    b = std::move(*xfer::Agent::create("b"));
    ASSERT_TRUE(local.register_with_agent(*a).ok());
    ASSERT_TRUE(peer.register_with_agent(*b).ok());
    auto port = b->listen("127.0.0.1", 0);
    ASSERT_TRUE(port.ok());
    ASSERT_TRUE(a->fetch_remote_metadata("127.0.0.1", *port).ok());
    auto remote = Layout::from_bytes(*peer.to_bytes());
    ASSERT_TRUE(remote.ok()) << remote.error().to_string();
    peer_view = std::make_unique<Layout>(std::move(*remote));
  }
  std::vector<xfer::Notification> notifs_of(xfer::Agent& agent) {
    std::vector<xfer::Notification> got;
    for (int i = 0; i < 1000 && got.empty(); ++i) {
      got = agent.get_notifs();
      std::this_thread::sleep_for(2ms);
    }
    return got;
  }
  std::unique_ptr<xfer::Agent> a, b;
  Layout local = host_layout(config(8, 64, 64), kShapes[0]);
  Layout peer = host_layout(config(12, 4096, 64), kShapes[2]);
  std::unique_ptr<Layout> peer_view;
};

TEST_F(TransferRemote, WriteWithNotificationThenRead) {
  auto e = engine();
  fill_all_blocks(local, 7);
  const std::vector<size_t> s = {0, 5, 6, 7}, d = {11, 2, 3, 0};
  CopyOptions o;
  o.agent = a.get();
  o.notification = "blocks 11,2,3,0 ready";
  auto t = e->copy(local, s, *peer_view, d, o);
  ASSERT_TRUE(t.ok()) << t.error().to_string();
  EXPECT_EQ(t->path(), TransferPath::Remote);
  ASSERT_TRUE(t->wait(10s).ok());
  EXPECT_TRUE(t->ready());
  EXPECT_EQ(notifs_of(*b), (std::vector<xfer::Notification>{{"a", "blocks 11,2,3,0 ready"}}));
  EXPECT_EQ(check_blocks(peer, d, s, 7), "");

  // READ the peer's blocks back into other local blocks.
  Layout back = host_layout(config(8, 1, 64), kShapes[1]);
  ASSERT_TRUE(back.register_with_agent(*a).ok());
  const std::vector<size_t> into = {1, 2, 3, 4};
  auto r = e->copy(*peer_view, d, back, into, {a.get(), std::nullopt});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_TRUE(r->wait(10s).ok());
  EXPECT_EQ(check_blocks(back, into, s, 7), "");
}

TEST_F(TransferRemote, Errors) {
  auto e = engine();
  const std::vector<size_t> one = {0};
  EXPECT_ERROR(e->copy(local, one, *peer_view, one), ErrorCode::InvalidArgument,
               "remote layout of agent 'b' needs an agent");
  EXPECT_ERROR(e->copy(*peer_view, one, *peer_view, std::vector<size_t>{1}, {a.get(), {}}),
               ErrorCode::InvalidArgument, "both layouts are remote");
  EXPECT_ERROR(e->copy(local, one, *peer_view, std::vector<size_t>{12}, {a.get(), {}}),
               ErrorCode::OutOfBounds, "destination block id 12");
  Layout unregistered = host_layout(config(8, 64, 64), kShapes[0]);
  EXPECT_ERROR(e->copy(unregistered, one, *peer_view, one, {a.get(), {}}), ErrorCode::OutOfBounds,
               "local descriptor");
  // An agent that does not know the peer.
  auto c = std::move(*xfer::Agent::create("c"));
  EXPECT_ERROR(e->copy(local, one, *peer_view, one, {c.get(), {}}), ErrorCode::NotFound, "'b'");
}

}  // namespace
}  // namespace kvbm
