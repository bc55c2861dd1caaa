// Prepared descriptor lists (Agent::prepare_descs, create_request by index): transfers
// with a peer and within one agent, every error, and stale lists (deregistered regions,
// invalidated or replaced peers, an agent destroyed before its lists).
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/test_support.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using Indices = std::vector<uint32_t>;
using List = std::shared_ptr<const PreparedDescs>;
using testing::make_buffer;
using testing::make_host_agent;

constexpr size_t kBlock = 4096;
constexpr size_t kBlocks = 16;

// kBlocks blocks of kBlock bytes of `s`.
DescList blocks_of(const SystemStorage& s) {
  DescList l(MemType::Dram);
  for (size_t i = 0; i < kBlocks; ++i) l.add(s.addr() + i * kBlock, kBlock);
  return l;
}

List prepare(Agent& a, const DescList& descs, const std::string& agent) {
  auto l = a.prepare_descs(descs, agent);
  EXPECT_TRUE(l.ok()) << l.error().to_string();
  return l.ok() ? *l : nullptr;
}

Status run(Agent& a, Op op, const PreparedDescs& local, const Indices& li,
           const PreparedDescs& remote, const Indices& ri,
           std::optional<std::string> notification = std::nullopt) {
  auto req = a.create_request(op, local, li, remote, ri, std::move(notification));
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(10s);
}

// Block `index` of `buf` holds block `from` of pattern `seed`.
void expect_block(const SystemStorage& buf, size_t index, uint64_t seed, size_t from) {
  const auto* p = static_cast<const char*>(buf.data()) + index * kBlock;
  EXPECT_EQ(testing::find_pattern_mismatch(p, kBlock, seed, from * kBlock), SIZE_MAX)
      << "block " << index << " is not block " << from << " of pattern " << seed;
}

std::vector<Notification> wait_notifs(Agent& a) {
  std::vector<Notification> got;
  for (int i = 0; i < 2500 && got.empty(); ++i) {
    got = a.get_notifs();
    if (got.empty()) std::this_thread::sleep_for(2ms);
  }
  return got;
}

// Agent "a" with its buffer, and peer "b" (in this process) whose metadata "a" loaded.
class PreparedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a = make_host_agent("a");
    b = make_host_agent("b");
    ASSERT_TRUE(a && b);
    ASSERT_TRUE(a->register_storage(abuf).ok());
    ASSERT_TRUE(b->register_storage(bbuf).ok());
    load_b();
    local = prepare(*a, blocks_of(abuf), "a");
    remote = prepare(*a, blocks_of(bbuf), "b");
    ASSERT_TRUE(local && remote);
  }
  void load_b() {
    auto md = b->local_metadata();
    ASSERT_TRUE(md.ok()) << md.error().to_string();
    ASSERT_EQ(a->load_remote_metadata(*md).value_or(""), "b");
  }
  std::unique_ptr<Agent> a, b;
  SystemStorage abuf = make_buffer(kBlocks * kBlock, 1);
  SystemStorage bbuf = make_buffer(kBlocks * kBlock, 2);
  List local, remote;
};

TEST_F(PreparedTest, ListsKeepWhatWasPrepared) {
  EXPECT_EQ(local->agent(), "a");
  EXPECT_EQ(remote->agent(), "b");
  EXPECT_EQ(local->descs(), blocks_of(abuf));
  EXPECT_EQ(remote->size(), kBlocks);
}

TEST_F(PreparedTest, WriteAndReadByIndexWithAPeer) {
  ASSERT_TRUE(run(*a, Op::Write, *local, {0, 3, 5}, *remote, {7, 1, 2}).ok());
  expect_block(bbuf, 7, 1, 0);
  expect_block(bbuf, 1, 1, 3);
  expect_block(bbuf, 2, 1, 5);
  expect_block(bbuf, 0, 2, 0);  // untouched
  // READ pulls b's blocks into a's, in any order, an index used twice on the remote side.
  ASSERT_TRUE(run(*a, Op::Read, *local, {9, 8, 10}, *remote, {15, 15, 0}).ok());
  expect_block(abuf, 9, 2, 15);
  expect_block(abuf, 8, 2, 15);
  expect_block(abuf, 10, 2, 0);
  expect_block(abuf, 11, 1, 11);  // untouched
}

TEST_F(PreparedTest, ARequestIsPostedAgainAndNotifies) {
  auto req = a->create_request(Op::Write, *local, Indices{4}, *remote, Indices{6}, "block 6");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  for (uint64_t seed : {10, 11}) {
    testing::fill_pattern(static_cast<char*>(abuf.data()) + 4 * kBlock, kBlock, seed);
    ASSERT_TRUE((*req)->post().ok());
    ASSERT_TRUE((*req)->wait(10s).ok());
    EXPECT_EQ(
        testing::find_pattern_mismatch(static_cast<char*>(bbuf.data()) + 6 * kBlock, kBlock, seed),
        SIZE_MAX);
    EXPECT_EQ(wait_notifs(*b), (std::vector<Notification>{{"a", "block 6"}}));
  }
}

TEST_F(PreparedTest, WithinOneAgentAListOfItsOwnIsTheRemoteSide) {
  ASSERT_TRUE(run(*a, Op::Write, *local, {0, 1}, *local, {14, 15}, "self").ok());
  expect_block(abuf, 14, 1, 0);
  expect_block(abuf, 15, 1, 1);
  EXPECT_EQ(wait_notifs(*a), (std::vector<Notification>{{"a", "self"}}));
  ASSERT_TRUE(run(*a, Op::Read, *local, {2}, *local, {14}).ok());
  expect_block(abuf, 2, 1, 0);
}

TEST_F(PreparedTest, PrepareErrors) {
  EXPECT_ERROR(a->prepare_descs(DescList(MemType::Dram), "a"), ErrorCode::InvalidArgument,
               "at least one descriptor");
  DescList zero = blocks_of(abuf);
  zero.descs[3].len = 0;
  EXPECT_ERROR(a->prepare_descs(zero, "a"), ErrorCode::InvalidArgument,
               "descriptor 3 has length 0");
  EXPECT_ERROR(a->prepare_descs(blocks_of(bbuf), "nobody"), ErrorCode::NotFound,
               "agent 'nobody' is not known to 'a'");
  DescList past = blocks_of(abuf);
  past.add(abuf.addr() + kBlocks * kBlock - 8, 16);
  EXPECT_ERROR(a->prepare_descs(past, "a"), ErrorCode::OutOfBounds, "descriptor 16 (DRAM addr 0x");
  EXPECT_ERROR(a->prepare_descs(past, "a"), ErrorCode::OutOfBounds,
               "is not inside memory registered with agent 'a'");
  DescList theirs = blocks_of(bbuf);
  theirs.descs[5].addr = abuf.addr();
  EXPECT_ERROR(a->prepare_descs(theirs, "b"), ErrorCode::OutOfBounds, "descriptor 5 (DRAM addr 0x");
  EXPECT_ERROR(a->prepare_descs(theirs, "b"), ErrorCode::OutOfBounds,
               "is not inside memory agent 'b' has registered");
  EXPECT_ERROR(a->prepare_descs(DescList(MemType::Vram, {{abuf.addr(), 16, 0}}), "a"),
               ErrorCode::OutOfBounds, "descriptor 0 (VRAM");
}

TEST_F(PreparedTest, RequestErrors) {
  const Indices one{0}, two{0, 1};
  EXPECT_ERROR(a->create_request(Op::Write, *local, {}, *remote, {}), ErrorCode::InvalidArgument,
               "at least one descriptor");
  EXPECT_ERROR(a->create_request(Op::Write, *local, two, *remote, one), ErrorCode::InvalidArgument,
               "2 local vs 1 remote");
  EXPECT_ERROR(a->create_request(Op::Write, *local, Indices{0, 16}, *remote, two),
               ErrorCode::OutOfBounds,
               "local index 16 (request descriptor 1) is past the end of a prepared list of 16");
  EXPECT_ERROR(a->create_request(Op::Write, *local, one, *remote, Indices{99}),
               ErrorCode::OutOfBounds, "remote index 99 (request descriptor 0)");
  DescList small(MemType::Dram, {{abuf.addr(), 100, 0}});
  auto s = prepare(*a, small, "a");
  ASSERT_TRUE(s);
  EXPECT_ERROR(a->create_request(Op::Write, *s, one, *remote, one), ErrorCode::InvalidArgument,
               "descriptor 0: local length 100 != remote length 4096");
  // A list of a peer's memory is never the local side.
  EXPECT_ERROR(a->create_request(Op::Write, *remote, one, *remote, one), ErrorCode::InvalidArgument,
               "the local list names memory of agent 'b'");
  // Lists belong to the agent that prepared them.
  auto bl = prepare(*b, blocks_of(bbuf), "b");
  ASSERT_TRUE(bl);
  EXPECT_ERROR(a->create_request(Op::Write, *local, one, *bl, one), ErrorCode::InvalidArgument,
               "the remote list (of agent 'b''s memory) was not prepared by agent 'a'");
  EXPECT_ERROR(b->create_request(Op::Write, *local, one, *bl, one), ErrorCode::InvalidArgument,
               "the local list (of agent 'a''s memory) was not prepared by agent 'b'");
  EXPECT_ERROR(
      a->create_request(Op::Write, *local, one, *remote, one, std::string((1 << 20) + 1, 'n')),
      ErrorCode::InvalidArgument, "notification");
}

// The same errors and choices as create_request over descriptor lists.
TEST_F(PreparedTest, UnsupportedPairIsRefusedAsByDescriptorLists) {
  AgentConfig posix_only;
  posix_only.backends = {"POSIX"};
  auto p = make_host_agent("p", posix_only);
  auto buf = make_buffer(2 * kBlock, 3);
  ASSERT_TRUE(p->register_storage(buf).ok());
  DescList l(MemType::Dram, {{buf.addr(), kBlock, 0}}),
      r(MemType::Dram, {{buf.addr() + kBlock, kBlock, 0}});
  auto pl = prepare(*p, l, "p"), pr = prepare(*p, r, "p");
  ASSERT_TRUE(pl && pr);
  const std::string why = "no backend of agent 'p' moves DRAM <-> DRAM with agent 'p'";
  EXPECT_ERROR(p->create_request(Op::Write, l, r, "p"), ErrorCode::Unsupported, why);
  EXPECT_ERROR(p->create_request(Op::Write, *pl, Indices{0}, *pr, Indices{0}),
               ErrorCode::Unsupported, why);
}

TEST_F(PreparedTest, ADeregisteredRegionMakesItsIndicesStale) {
  auto extra = make_buffer(2 * kBlock, 5);
  auto reg = a->register_memory(DescList(MemType::Dram, {{extra.addr(), 2 * kBlock, 0}}));
  ASSERT_TRUE(reg.ok());
  DescList mixed = blocks_of(abuf);
  mixed.add(extra.addr(), kBlock);  // index 16: the extra region
  auto list = prepare(*a, mixed, "a");
  ASSERT_TRUE(list);
  auto made_before = a->create_request(Op::Write, *list, Indices{16}, *remote, Indices{3});
  ASSERT_TRUE(made_before.ok());

  (*reg).reset();  // deregistered
  EXPECT_ERROR(a->create_request(Op::Write, *list, Indices{0, 16}, *remote, Indices{0, 1}),
               ErrorCode::NotRegistered, "local descriptor 16 (DRAM addr 0x");
  EXPECT_ERROR(a->create_request(Op::Write, *list, Indices{16}, *remote, Indices{1}),
               ErrorCode::NotRegistered,
               "lies in a region deregistered since the list was prepared; prepare the list again");
  // As the remote side within the agent, too.
  EXPECT_ERROR(a->create_request(Op::Write, *local, Indices{0}, *list, Indices{16}),
               ErrorCode::NotRegistered, "remote descriptor 16");
  EXPECT_ERROR(a->prepare_descs(mixed, "a"), ErrorCode::OutOfBounds, "descriptor 16");
  // The regions that stay registered still serve; a request made before keeps its regions.
  ASSERT_TRUE(run(*a, Op::Write, *list, {2}, *remote, {4}).ok());
  expect_block(bbuf, 4, 1, 2);
  ASSERT_TRUE((*made_before)->post().ok());
  ASSERT_TRUE((*made_before)->wait(10s).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(static_cast<char*>(bbuf.data()) + 3 * kBlock, kBlock, 5),
            SIZE_MAX);

  // Registered again and prepared again, it serves.
  auto again = a->register_memory(DescList(MemType::Dram, {{extra.addr(), 2 * kBlock, 0}}));
  ASSERT_TRUE(again.ok());
  auto fresh = prepare(*a, mixed, "a");
  ASSERT_TRUE(fresh);
  ASSERT_TRUE(run(*a, Op::Read, *fresh, {16}, *remote, {9}).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(extra.data(), kBlock, 2, 9 * kBlock), SIZE_MAX);
}

TEST_F(PreparedTest, AnInvalidatedPeerMakesItsListStale) {
  auto req = a->create_request(Op::Read, *local, Indices{0}, *remote, Indices{0});
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE(a->invalidate_remote("b").ok());
  EXPECT_ERROR(a->create_request(Op::Read, *local, Indices{0}, *remote, Indices{0}),
               ErrorCode::Remote,
               "agent 'b' was invalidated or replaced by newer metadata since the remote list was "
               "prepared; prepare the list again");
  EXPECT_ERROR((*req)->post(), ErrorCode::Remote, "invalidated");
  EXPECT_ERROR(a->prepare_descs(blocks_of(bbuf), "b"), ErrorCode::NotFound, "'b'");
  // The local list is untouched by what happens to peers.
  ASSERT_TRUE(run(*a, Op::Write, *local, {0}, *local, {1}).ok());
  load_b();
  auto fresh = prepare(*a, blocks_of(bbuf), "b");
  ASSERT_TRUE(fresh);
  ASSERT_TRUE(run(*a, Op::Read, *local, {5}, *fresh, {6}).ok());
  expect_block(abuf, 5, 2, 6);
}

// A peer that restarted under the same name, with other memory: the old list is refused,
// never used against the new peer's regions.
TEST_F(PreparedTest, APeerReplacedByNewerMetadataMakesItsListStale) {
  load_b();  // the same metadata again replaces the peer, too
  EXPECT_ERROR(a->create_request(Op::Write, *local, Indices{0}, *remote, Indices{0}),
               ErrorCode::Remote, "replaced by newer metadata");
  b.reset();
  b = make_host_agent("b");
  auto nbuf = make_buffer(kBlocks * kBlock, 7);
  ASSERT_TRUE(b->register_storage(nbuf).ok());
  load_b();
  EXPECT_ERROR(a->create_request(Op::Write, *local, Indices{0}, *remote, Indices{0}),
               ErrorCode::Remote, "prepare the list again");
  auto fresh = prepare(*a, blocks_of(nbuf), "b");
  ASSERT_TRUE(fresh);
  ASSERT_TRUE(run(*a, Op::Read, *local, {1, 2}, *fresh, {3, 4}).ok());
  expect_block(abuf, 1, 7, 3);
  expect_block(abuf, 2, 7, 4);
  ASSERT_TRUE(run(*a, Op::Write, *local, {0}, *fresh, {15}).ok());
  expect_block(nbuf, 15, 1, 0);
}

// Lists (and requests holding them) may outlive their agent: they hold nothing then, and
// another agent refuses them.
TEST_F(PreparedTest, ListsOutlivingTheirAgent) {
  auto req = a->create_request(Op::Write, *local, Indices{0}, *remote, Indices{0});
  ASSERT_TRUE(req.ok());
  List own = local, peer = remote;
  local.reset();
  remote.reset();  // the request holds the lists now
  a.reset();
  EXPECT_ERROR((*req)->post(), ErrorCode::Cancelled, "agent 'a' was destroyed");
  auto c = make_host_agent("a");  // the same name is no other agent's list
  EXPECT_ERROR(c->create_request(Op::Write, *own, Indices{0}, *own, Indices{1}),
               ErrorCode::InvalidArgument, "was not prepared by agent 'a'");
  EXPECT_EQ(own->descs(), blocks_of(abuf));  // what it describes stays readable
  (*req).reset();
  own.reset();
  peer.reset();
}

// Local FILE-capable memory registered with one backend only: a backend is chosen for the
// descriptors a request names, not for the whole list.
TEST_F(PreparedTest, BackendIsChosenForTheIndexedDescriptors) {
  testing::TempFile f;
  ASSERT_GE(f.fd, 0);
  ASSERT_EQ(::ftruncate(f.fd, 4 * kBlock), 0);
  auto file_reg =
      a->register_memory(DescList(MemType::File, {{0, 4 * kBlock, static_cast<uint64_t>(f.fd)}}));
  ASSERT_TRUE(file_reg.ok()) << file_reg.error().to_string();
  auto posix_buf = make_buffer(kBlock, 8);
  auto posix_reg =
      a->register_memory(DescList(MemType::Dram, {{posix_buf.addr(), kBlock, 0}}), "POSIX");
  ASSERT_TRUE(posix_reg.ok());
  DescList mem = blocks_of(abuf);
  mem.add(posix_buf.addr(), kBlock);  // index 16: POSIX only
  auto mine = prepare(*a, mem, "a");
  auto file = prepare(*a,
                      DescList(MemType::File, {{0, kBlock, static_cast<uint64_t>(f.fd)},
                                               {kBlock, kBlock, static_cast<uint64_t>(f.fd)}}),
                      "a");
  ASSERT_TRUE(mine && file);
  ASSERT_TRUE(run(*a, Op::Write, *mine, {3}, *file, {0}).ok());   // any backend holding both
  ASSERT_TRUE(run(*a, Op::Write, *mine, {16}, *file, {1}).ok());  // POSIX only
  ASSERT_TRUE(run(*a, Op::Read, *mine, {16, 4}, *file, {0, 1}).ok());
  expect_block(abuf, 4, 8, 0);
  EXPECT_EQ(testing::find_pattern_mismatch(posix_buf.data(), kBlock, 1, 3 * kBlock), SIZE_MAX);
}

// Threads share the lists: each makes, posts and waits its own requests.
TEST_F(PreparedTest, ThreadsShareLists) {
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const Op op = (i % 2 == 0) ? Op::Write : Op::Read;
        if (!run(*a, op, *local, {t}, *remote, {t + 4}).ok()) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  for (uint32_t t = 0; t < 4; ++t) expect_block(bbuf, t + 4, 1, t);
}

}  // namespace
}  // namespace kvbm::xfer
