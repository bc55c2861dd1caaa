// The block transfer engine on CPU tiers: host pairs across every layout kind, files through
// io_uring, a peer's layout through two agents, and every validation error.
#include "kvbm/transfer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "support/block_pattern.h"
#include "support/test_support.h"
#include "transfer/stream_copy.h"

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
  o = {};
  o.cuda_threads = 2048;
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "threads 2048");
  o = {};
  o.cuda_max_piece = 0;
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "max piece 0");
  o = {};
  o.cuda_kernel = static_cast<CudaCopyKernel>(7);
  EXPECT_ERROR(TransferEngine::create(o), ErrorCode::InvalidArgument, "cuda_kernel 7");
  EXPECT_STREQ(to_string(CudaCopyKernel::Warp), "warp");
  auto e = engine();
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

  // Tier pairs without a path.
  Layout d1 = fake_layout(config(4), StorageType::disk(100));
  Layout d2 = fake_layout(config(4), StorageType::disk(101));
  EXPECT_ERROR(e->copy(d1, one, d2, one), ErrorCode::Unsupported,
               "no block copy path from Disk(fd 100) to Disk(fd 101)");
  Layout g0 = fake_layout(config(4), StorageType::device(0));
  Layout g1 = fake_layout(config(4), StorageType::device(1));
  EXPECT_ERROR(e->path_for(g0, g1), ErrorCode::Unsupported, "different GPUs");
  EXPECT_ERROR(e->path_for(d1, g0), ErrorCode::Unsupported, "host layout");
  EXPECT_EQ(*e->path_for(a, g0), TransferPath::Cuda);
  EXPECT_EQ(*e->path_for(a, d1), TransferPath::File);
  if (!cuda_device_count()) {  // without a GPU, the CUDA path says so
    EXPECT_ERROR(e->copy(a, one, g0, one), ErrorCode::DeviceUnavailable, "");
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
      auto disk = Layout::allocate(c, shape.kind, DiskAllocator(dir.path()), shape.order);
      ASSERT_TRUE(disk.ok()) << disk.error().to_string();
      fill_all_blocks(src, 6);
      const std::vector<size_t> s = {5, 1, 2}, d = {0, 3, 4}, b = {1, 5, 0};
      auto w = e->copy(src, s, *disk, d);
      ASSERT_TRUE(w.ok()) << w.error().to_string();
      EXPECT_EQ(w->path(), TransferPath::File);
      ASSERT_TRUE(w->wait(10s).ok());
      auto r = e->copy(*disk, d, back, b);
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      auto st = r->wait(10s);
      ASSERT_TRUE(st.ok()) << st.error().to_string();
      EXPECT_TRUE(r->ready());
      EXPECT_EQ(check_blocks(back, b, s, 6), "");
    }
  }
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
