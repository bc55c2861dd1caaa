// Layouts: config validation, every address formula against an independent walk of the
// layout, construction errors, and the serialized form (round trip and garbage).
#include "kvbm/layout.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using json = nlohmann::json;

// A storage with an arbitrary address and no bytes: addressing needs none.
class FakeStorage final : public Storage {
 public:
  FakeStorage(uint64_t addr, size_t size, StorageType type = StorageType::system())
      : addr_(addr), size_(size), type_(type) {}
  StorageType type() const override { return type_; }
  uint64_t addr() const override { return addr_; }
  size_t size() const override { return size_; }

 private:
  uint64_t addr_;
  size_t size_;
  StorageType type_;
};

LayoutConfig small(size_t outer = 2, size_t alignment = 1) {
  LayoutConfig c;
  c.num_blocks = 5;
  c.num_layers = 3;
  c.outer_dim = outer;
  c.page_size = 4;
  c.inner_dim = 6;
  c.dtype_bytes = 2;
  c.alignment = alignment;
  return c;
}

size_t round_up(size_t v, size_t a) {
  while (v % a != 0) ++v;  // deliberately not the bit trick the library uses
  return v;
}

std::vector<std::unique_ptr<Storage>> fakes(const std::vector<size_t>& sizes,
                                            uint64_t base = 1 << 20) {
  std::vector<std::unique_ptr<Storage>> v;
  for (size_t i = 0; i < sizes.size(); ++i)
    v.push_back(std::make_unique<FakeStorage>(base + (i << 24), sizes[i]));
  return v;
}

TEST(LayoutConfig, EveryValidationError) {
  EXPECT_TRUE(small().validate().ok());
  auto with = [](auto mutate) {
    LayoutConfig c = small();
    mutate(c);
    return c.validate();
  };
  EXPECT_ERROR(with([](auto& c) { c.num_blocks = 0; }), ErrorCode::InvalidArgument, "num_blocks");
  EXPECT_ERROR(with([](auto& c) { c.num_layers = 0; }), ErrorCode::InvalidArgument, "num_layers");
  EXPECT_ERROR(with([](auto& c) { c.page_size = 0; }), ErrorCode::InvalidArgument, "page_size");
  EXPECT_ERROR(with([](auto& c) { c.inner_dim = 0; }), ErrorCode::InvalidArgument, "inner_dim");
  EXPECT_ERROR(with([](auto& c) { c.dtype_bytes = 0; }), ErrorCode::InvalidArgument, "dtype_bytes");
  EXPECT_ERROR(with([](auto& c) { c.outer_dim = 0; }), ErrorCode::InvalidArgument,
               "outer_dim must be 1 or 2, not 0");
  EXPECT_ERROR(with([](auto& c) { c.outer_dim = 3; }), ErrorCode::InvalidArgument, "not 3");
  EXPECT_ERROR(with([](auto& c) { c.alignment = 0; }), ErrorCode::InvalidArgument,
               "alignment 0 is not a power of two");
  EXPECT_ERROR(with([](auto& c) { c.alignment = 48; }), ErrorCode::InvalidArgument, "alignment 48");
  EXPECT_ERROR(with([](auto& c) { c.inner_dim = size_t{1} << 62; }), ErrorCode::InvalidArgument,
               "overflows");
}

TEST(LayoutConfig, SizeOverflowIsAnError) {
  LayoutConfig c = small();
  c.num_blocks = size_t{1} << 60;
  for (auto [kind, order] : {std::pair{LayoutKind::FullyContiguous, LayerOrder::BlockMajor},
                             {LayoutKind::LayerSeparate, LayerOrder::BlockMajor},
                             {LayoutKind::LayerSeparate, LayerOrder::OuterMajor}}) {
    EXPECT_ERROR(Layout::required_sizes(c, kind, order), ErrorCode::InvalidArgument, "overflows");
  }
  c = small();
  c.alignment = size_t{1} << 63;  // rounding a stride up to it overflows
  c.num_blocks = 2;
  EXPECT_ERROR(Layout::required_sizes(c, LayoutKind::FullyContiguous), ErrorCode::InvalidArgument,
               "overflows");
}

// Walks each layout in storage order, placing chunks one after another and padding where
// the layout says strides are aligned; every chunk must be where memory_region says.
struct Case {
  LayoutKind kind;
  LayerOrder order;
  size_t outer;
  size_t alignment;
};

class LayoutAddress : public ::testing::TestWithParam<Case> {};

TEST_P(LayoutAddress, MatchesAnIndependentWalk) {
  const Case p = GetParam();
  const LayoutConfig c = small(p.outer, p.alignment);
  const size_t chunk = c.page_size * c.inner_dim * c.dtype_bytes;
  // expected[block][layer][outer] = (region, offset)
  std::map<std::tuple<size_t, size_t, size_t>, std::pair<size_t, size_t>> expected;
  std::vector<size_t> sizes;
  if (p.kind == LayoutKind::FullyContiguous) {
    size_t at = 0;
    for (size_t b = 0; b < c.num_blocks; ++b) {
      for (size_t l = 0; l < c.num_layers; ++l)
        for (size_t o = 0; o < c.outer_dim; ++o, at += chunk) expected[{b, l, o}] = {0, at};
      at = round_up(at, c.alignment);
    }
    sizes = {at};
  } else {
    for (size_t l = 0; l < c.num_layers; ++l) {
      size_t at = 0;
      if (p.order == LayerOrder::BlockMajor) {
        for (size_t b = 0; b < c.num_blocks; ++b) {
          for (size_t o = 0; o < c.outer_dim; ++o, at += chunk) expected[{b, l, o}] = {l, at};
          at = round_up(at, c.alignment);
        }
      } else {
        for (size_t o = 0; o < c.outer_dim; ++o)
          for (size_t b = 0; b < c.num_blocks; ++b) {
            expected[{b, l, o}] = {l, at};
            at = round_up(at + chunk, c.alignment);
          }
      }
      sizes.push_back(at);
    }
  }
  auto req = Layout::required_sizes(c, p.kind, p.order);
  ASSERT_TRUE(req.ok());
  EXPECT_EQ(*req, sizes);

  auto layout = Layout::create(c, p.kind, fakes(sizes), p.order);
  ASSERT_TRUE(layout.ok()) << layout.error().to_string();
  EXPECT_EQ(layout->num_regions(), sizes.size());
  for (const auto& [key, where] : expected) {
    auto [b, l, o] = key;
    auto m = layout->memory_region(b, l, o);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->region, where.first);
    EXPECT_EQ(m->offset, where.second) << "block " << b << " layer " << l << " outer " << o;
    EXPECT_EQ(m->size, chunk);
    EXPECT_EQ(m->addr, (uint64_t{1} << 20) + (uint64_t{where.first} << 24) + where.second);
    EXPECT_EQ(layout->memory_region_unchecked(b, l, o), *m);
    // The stride form (what the GPU kernel computes) gives the same address.
    const Layout::Strides st = layout->strides();
    const uint64_t base = layout->region(st.per_layer_regions ? l : 0).addr();
    EXPECT_EQ(base + b * st.block + l * st.layer + o * st.outer, m->addr)
        << "strides: block " << b << " layer " << l << " outer " << o;
  }
  // Bounds, each naming the index and its limit.
  EXPECT_ERROR(layout->memory_region(c.num_blocks, 0, 0), ErrorCode::OutOfBounds,
               "block 5 out of range (num_blocks 5)");
  EXPECT_ERROR(layout->memory_region(0, c.num_layers, 0), ErrorCode::OutOfBounds,
               "layer 3 out of range (num_layers 3)");
  EXPECT_ERROR(layout->memory_region(0, 0, c.outer_dim), ErrorCode::OutOfBounds, "outer index");
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, LayoutAddress,
    ::testing::Values(Case{LayoutKind::FullyContiguous, LayerOrder::BlockMajor, 1, 1},
                      Case{LayoutKind::FullyContiguous, LayerOrder::BlockMajor, 2, 1},
                      Case{LayoutKind::FullyContiguous, LayerOrder::BlockMajor, 2, 256},
                      Case{LayoutKind::FullyContiguous, LayerOrder::BlockMajor, 1, 4096},
                      Case{LayoutKind::LayerSeparate, LayerOrder::BlockMajor, 1, 1},
                      Case{LayoutKind::LayerSeparate, LayerOrder::BlockMajor, 2, 64},
                      Case{LayoutKind::LayerSeparate, LayerOrder::BlockMajor, 2, 4096},
                      Case{LayoutKind::LayerSeparate, LayerOrder::OuterMajor, 1, 1},
                      Case{LayoutKind::LayerSeparate, LayerOrder::OuterMajor, 2, 128},
                      Case{LayoutKind::LayerSeparate, LayerOrder::OuterMajor, 2, 4096}));

TEST(LayoutCreate, EveryConstructionError) {
  const LayoutConfig c = small();
  auto sizes = *Layout::required_sizes(c, LayoutKind::LayerSeparate);
  EXPECT_ERROR(Layout::create(c, LayoutKind::LayerSeparate, fakes({sizes[0], sizes[1]})),
               ErrorCode::InvalidArgument, "needs 3 region(s), got 2");
  EXPECT_ERROR(Layout::create(c, LayoutKind::FullyContiguous, {}), ErrorCode::InvalidArgument,
               "needs 1 region(s), got 0");
  auto small_one = fakes(sizes);
  small_one[1] = std::make_unique<FakeStorage>(1 << 20, sizes[1] - 1);
  EXPECT_ERROR(Layout::create(c, LayoutKind::LayerSeparate, std::move(small_one)),
               ErrorCode::OutOfBounds,
               "region 1 has " + std::to_string(sizes[1] - 1) + " bytes; the layout needs " +
                   std::to_string(sizes[1]));
  auto mixed = fakes(sizes);
  mixed[2] = std::make_unique<FakeStorage>(0, sizes[2], StorageType::disk(9));
  EXPECT_ERROR(Layout::create(c, LayoutKind::LayerSeparate, std::move(mixed)),
               ErrorCode::InvalidArgument, "region 2 is Disk");
  auto nulls = fakes(sizes);
  nulls[0] = std::make_unique<NullStorage>(sizes[0]);
  EXPECT_ERROR(Layout::create(c, LayoutKind::LayerSeparate, std::move(nulls)),
               ErrorCode::InvalidArgument, "region 0 is Null");
  auto empty = fakes(sizes);
  empty[1].reset();
  EXPECT_ERROR(Layout::create(c, LayoutKind::LayerSeparate, std::move(empty)),
               ErrorCode::InvalidArgument, "region 1 is null");
  std::vector<std::unique_ptr<Storage>> remote;
  remote.push_back(std::make_unique<RemoteStorage>(0x1000, 1 << 20, xfer::MemType::Dram, 0));
  EXPECT_ERROR(Layout::create(c, LayoutKind::FullyContiguous, std::move(remote)),
               ErrorCode::InvalidArgument, "Remote");
  const LayoutConfig aligned = small(2, 256);
  auto big = *Layout::required_sizes(aligned, LayoutKind::FullyContiguous);
  EXPECT_ERROR(Layout::create(aligned, LayoutKind::FullyContiguous, fakes(big, 0x1010)),
               ErrorCode::InvalidArgument, "address 4112 is not a multiple of the alignment 256");
  LayoutConfig bad = c;
  bad.page_size = 0;
  EXPECT_ERROR(Layout::create(bad, LayoutKind::FullyContiguous, fakes({1 << 20})),
               ErrorCode::InvalidArgument, "page_size");
  // Disk regions of different files are one tier.
  std::vector<std::unique_ptr<Storage>> disks;
  for (int i = 0; i < 3; ++i)
    disks.push_back(std::make_unique<FakeStorage>(0, sizes[i], StorageType::disk(10 + i)));
  EXPECT_TRUE(Layout::create(c, LayoutKind::LayerSeparate, std::move(disks)).ok());
}

TEST(LayoutCreate, AllocatesOnHostAndDisk) {
  const LayoutConfig c = small(2, 4096);
  auto sys =
      Layout::allocate(c, LayoutKind::LayerSeparate, SystemAllocator(), LayerOrder::OuterMajor);
  ASSERT_TRUE(sys.ok()) << sys.error().to_string();
  EXPECT_EQ(sys->storage_type(), StorageType::system());
  EXPECT_EQ(sys->num_regions(), 3u);
  EXPECT_EQ(sys->order(), LayerOrder::OuterMajor);
  testing::TempDir dir;
  auto disk = Layout::allocate(c, LayoutKind::FullyContiguous, DiskAllocator(dir.path()));
  ASSERT_TRUE(disk.ok()) << disk.error().to_string();
  EXPECT_EQ(disk->storage_type().kind, StorageKind::Disk);
  EXPECT_EQ(disk->memory_region(1, 0, 0)->addr, 4096u);  // a file offset
  EXPECT_FALSE(disk->is_remote());
  if (!built_with_cuda() || !cuda_device_count()) {
    EXPECT_ERROR(Layout::allocate(c, LayoutKind::FullyContiguous, PinnedAllocator()),
                 ErrorCode::DeviceUnavailable, "");
    EXPECT_ERROR(Layout::allocate(c, LayoutKind::FullyContiguous, DeviceAllocator()),
                 ErrorCode::DeviceUnavailable, "");
  }
}

class LayoutSerialize : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = xfer::Agent::create("owner");
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    agent = std::move(*a);
    auto l = Layout::allocate(small(2, 64), LayoutKind::LayerSeparate, SystemAllocator(),
                              LayerOrder::OuterMajor);
    ASSERT_TRUE(l.ok());
    layout = std::make_unique<Layout>(std::move(*l));
  }
  json wire() {
    auto j = layout->to_json();
    EXPECT_TRUE(j.ok());
    return json::parse(*j);
  }
  std::unique_ptr<xfer::Agent> agent;
  std::unique_ptr<Layout> layout;
};

void expect_same_addresses(const Layout& a, const Layout& b) {
  ASSERT_TRUE(a.same_shape(b));
  const LayoutConfig& c = a.config();
  for (size_t blk = 0; blk < c.num_blocks; ++blk)
    for (size_t l = 0; l < c.num_layers; ++l)
      for (size_t o = 0; o < c.outer_dim; ++o)
        EXPECT_EQ(*a.memory_region(blk, l, o), *b.memory_region(blk, l, o));
}

TEST_F(LayoutSerialize, RoundTripsThroughBytesAndJson) {
  EXPECT_ERROR(layout->to_bytes(), ErrorCode::NotRegistered, "region 0");
  ASSERT_TRUE(layout->register_with_agent(*agent).ok());
  ASSERT_TRUE(layout->register_with_agent(*agent).ok());  // already registered: fine
  auto bytes = layout->to_bytes();
  ASSERT_TRUE(bytes.ok()) << bytes.error().to_string();
  auto peer = Layout::from_bytes(*bytes);
  ASSERT_TRUE(peer.ok()) << peer.error().to_string();
  EXPECT_TRUE(peer->is_remote());
  EXPECT_EQ(peer->remote_agent(), "owner");
  EXPECT_EQ(peer->storage_type(), StorageType::remote());
  EXPECT_EQ(peer->config(), layout->config());
  EXPECT_EQ(peer->kind(), LayoutKind::LayerSeparate);
  EXPECT_EQ(peer->order(), LayerOrder::OuterMajor);
  ASSERT_EQ(peer->remote_regions().size(), 3u);
  EXPECT_EQ(peer->remote_regions()[1].storage().addr(), layout->region(1).addr());
  expect_same_addresses(*layout, *peer);
  EXPECT_ERROR(peer->register_with_agent(*agent), ErrorCode::InvalidArgument, "remote layout");
  // A remote layout re-serializes to the same description.
  auto again = peer->to_bytes();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);

  auto text = layout->to_json();
  ASSERT_TRUE(text.ok());
  auto from_text = Layout::from_json(*text);
  ASSERT_TRUE(from_text.ok()) << from_text.error().to_string();
  expect_same_addresses(*layout, *from_text);
}

TEST_F(LayoutSerialize, RejectsGarbage) {
  ASSERT_TRUE(layout->register_with_agent(*agent).ok());
  EXPECT_ERROR(Layout::from_bytes("garbage"), ErrorCode::InvalidArgument, "does not parse");
  EXPECT_ERROR(Layout::from_json("{nope"), ErrorCode::InvalidArgument, "does not parse");
  EXPECT_ERROR(Layout::from_json("[1,2]"), ErrorCode::InvalidArgument, "not an object");
  EXPECT_ERROR(Layout::from_json(std::string((16 << 20) + 1, ' ')), ErrorCode::InvalidArgument,
               "exceeds");
  auto bytes = *layout->to_bytes();
  for (size_t cut = 0; cut < bytes.size(); cut += 5)  // every truncation fails cleanly
    EXPECT_FALSE(Layout::from_bytes(std::string_view(bytes).substr(0, cut)).ok());

  auto check = [&](auto mutate, ErrorCode code, const std::string& needle) {
    json j = wire();
    mutate(j);
    EXPECT_ERROR(Layout::from_json(j.dump()), code, needle);
  };
  check([](json& j) { j["v"] = 2; }, ErrorCode::InvalidArgument, "version 2");
  check([](json& j) { j.erase("v"); }, ErrorCode::InvalidArgument, "lacks 'v'");
  check([](json& j) { j["v"] = "one"; }, ErrorCode::InvalidArgument, "not an unsigned");
  check([](json& j) { j["kind"] = "Sideways"; }, ErrorCode::InvalidArgument, "kind 'Sideways'");
  check([](json& j) { j.erase("kind"); }, ErrorCode::InvalidArgument, "'kind'");
  check([](json& j) { j["order"] = 7; }, ErrorCode::InvalidArgument, "'order'");
  check([](json& j) { j["order"] = "Random"; }, ErrorCode::InvalidArgument, "order 'Random'");
  check([](json& j) { j.erase("config"); }, ErrorCode::InvalidArgument, "'config'");
  check([](json& j) { j["config"].erase("page"); }, ErrorCode::InvalidArgument, "lacks 'page'");
  check([](json& j) { j["config"]["blocks"] = -1; }, ErrorCode::InvalidArgument, "'blocks'");
  check([](json& j) { j["config"]["blocks"] = 0; }, ErrorCode::InvalidArgument, "num_blocks");
  check([](json& j) { j["config"]["align"] = 3; }, ErrorCode::InvalidArgument, "alignment 3");
  check([](json& j) { j["config"]["blocks"] = 1000; }, ErrorCode::InvalidArgument,
        "the layout needs");
  check([](json& j) { j["config"]["inner"] = uint64_t{1} << 62; }, ErrorCode::InvalidArgument,
        "overflows");
  check([](json& j) { j.erase("regions"); }, ErrorCode::InvalidArgument, "'regions'");
  check([](json& j) { j["regions"].erase(1); }, ErrorCode::InvalidArgument,
        "needs 3 region(s), got 2");
  check([](json& j) { j["regions"][0] = 5; }, ErrorCode::InvalidArgument,
        "region 0 is not a descriptor");
  check([](json& j) { j["regions"][2]["agent"] = "other"; }, ErrorCode::InvalidArgument,
        "belongs to agent 'other'");
  check([](json& j) { j["regions"][1]["mem"] = "VRAM"; }, ErrorCode::InvalidArgument, "one tier");
  check([](json& j) { j["regions"][0]["mem"] = "UNKNOWN"; }, ErrorCode::InvalidArgument, "UNKNOWN");
  check([](json& j) { j["regions"][0]["size"] = 1; }, ErrorCode::InvalidArgument,
        "region 0 has 1 bytes");
  check([](json& j) { j["regions"][0]["addr"] = 3; }, ErrorCode::InvalidArgument,
        "not a multiple of the alignment");
  check([](json& j) { j["regions"][0].erase("addr"); }, ErrorCode::InvalidArgument,
        "region 0: remote descriptor lacks 'addr'");
  // A CBOR form whose region is not bytes.
  json j = wire();
  EXPECT_ERROR(Layout::from_bytes([&] {
                 auto v = json::to_cbor(j);
                 return std::string(v.begin(), v.end());
               }()),
               ErrorCode::InvalidArgument, "region 0 is not a descriptor");
  EXPECT_ERROR(Layout::from_remote(small(), LayoutKind::FullyContiguous, {}),
               ErrorCode::InvalidArgument, "no regions");
}

// A peer's bytes nest as deep as it likes: nlohmann's CBOR reader and JSON writer recurse
// per level, so half a megabyte of nesting overflowed the stack before the depth guard.
TEST_F(LayoutSerialize, DeepNestingIsRejectedWithoutCrashing) {
  ASSERT_TRUE(layout->register_with_agent(*agent).ok());
  for (char head : {'\x81', '\xa1', '\x9f', '\xc6'}) {  // array, map, indefinite, tag
    std::string deep_cbor(500000, head);
    deep_cbor += '\x00';
    EXPECT_ERROR(Layout::from_bytes(deep_cbor), ErrorCode::InvalidArgument,
                 "layout nests deeper than 32 levels");
  }
  // Deep JSON inside a region (the decoder re-serializes each region object).
  std::string text = wire().dump();
  const size_t region = text.find("\"regions\":[{");
  ASSERT_NE(region, std::string::npos);
  text.insert(region + 12, "\"deep\":" + std::string(200000, '[') + std::string(200000, ']') + ",");
  EXPECT_ERROR(Layout::from_json(text), ErrorCode::InvalidArgument,
               "layout nests deeper than 32 levels");
  // Brackets inside strings do not count, and nesting within the limit still decodes.
  json j = wire();
  j["note"] = std::string(1000, '[');
  json nested = 1;
  for (int i = 0; i < 28; ++i) nested = json::array({nested});
  j["regions"][0]["extra"] = nested;
  EXPECT_TRUE(Layout::from_json(j.dump()).ok());
  // A CBOR array declaring more items than the input holds fails as a parse error.
  EXPECT_ERROR(Layout::from_bytes(std::string("\x9b\x0f\xff\xff\xff\xff\xff\xff\xff", 9)),
               ErrorCode::InvalidArgument, "does not parse");
}

}  // namespace
}  // namespace kvbm
