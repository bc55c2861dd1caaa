// Agents that find each other through a real etcd: publish, fetch by name, follow a peer
// that leaves, dies or restarts, and keep working while etcd is away.
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/etcd_server.h"
#include "support/test_support.h"
#include "support/two_process.h"
#include "xfer/etcd_client.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::dram;
using testing::make_agent;
using testing::make_buffer;

constexpr testing::Transport kTcp{"tcp", "tcp,self", "off"};

AgentConfig etcd_config(const testing::EtcdServer& etcd) {
  AgentConfig c;
  c.add_cuda_if_gpu = false;
  c.etcd_endpoints = {etcd.endpoint()};
  c.etcd_prefix = "test/";
  c.etcd_lease_ttl = 2s;
  c.peer_timeout = testing::peer_timeout();
  return c;
}

// Polls `cond` for up to `timeout` (etcd's events arrive on another thread).
template <typename Cond>
bool eventually(Cond cond, std::chrono::milliseconds timeout = 15s) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return cond();
}

TEST(AgentEtcd, WithoutEndpointsEveryCallIsUnsupported) {
  unsetenv("KVBM_ETCD_ENDPOINTS");
  auto a = make_agent("a", AgentConfig{});
  ASSERT_NE(a, nullptr);
  EXPECT_ERROR(a->publish_metadata(), ErrorCode::Unsupported, "no etcd endpoints");
  EXPECT_ERROR(a->withdraw_metadata(), ErrorCode::Unsupported, "no etcd endpoints");
  EXPECT_ERROR(a->fetch_remote_metadata(std::string("b")), ErrorCode::Unsupported,
               "no etcd endpoints");
  EXPECT_ERROR(a->fetch_published(std::string("b"), std::string("k")), ErrorCode::Unsupported,
               "no etcd endpoints");
}

TEST(AgentEtcd, BadConfigIsRefusedAtCreation) {
  AgentConfig c;
  c.etcd_endpoints = {"https://127.0.0.1:1"};
  EXPECT_ERROR(Agent::create("a", c), ErrorCode::InvalidArgument, "not http://host:port");
  c.etcd_endpoints = {"127.0.0.1:1"};
  c.etcd_lease_ttl = 1s;
  EXPECT_ERROR(Agent::create("a", c), ErrorCode::InvalidArgument, "ttl of 1 s");
}

TEST(AgentEtcd, PublishFetchByNameTransferWithdraw) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  testing::use_transport(kTcp);
  auto a = make_agent("a", etcd_config(etcd)), b = make_agent("b", etcd_config(etcd));
  ASSERT_TRUE(a && b);
  auto abuf = make_buffer(1 << 20, 5), bbuf = make_buffer(1 << 20, 6);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  EXPECT_ERROR(b->fetch_remote_metadata(std::string("a")), ErrorCode::NotFound, "no agent 'a'");
  ASSERT_TRUE(a->publish_metadata().ok());
  ASSERT_TRUE(a->publish("blocks/7", "descriptor bytes").ok());

  auto name = b->fetch_remote_metadata(std::string("a"));
  ASSERT_TRUE(name.ok()) << name.error().to_string();
  EXPECT_EQ(*name, "a");
  ASSERT_TRUE(
      testing::transfer(*b, Op::Write, dram(bbuf.addr(), 1 << 20), dram(abuf.addr(), 1 << 20), "a")
          .ok());
  a->progress();
  EXPECT_EQ(testing::find_pattern_mismatch(abuf.data(), 1 << 20, 6), SIZE_MAX);
  EXPECT_EQ(b->fetch_published(std::string("a"), std::string("blocks/7")).value(),
            "descriptor bytes");
  EXPECT_ERROR(b->fetch_published(std::string("a"), std::string("blocks/8")), ErrorCode::NotFound,
               "no item 'blocks/8'");
  ASSERT_TRUE(a->unpublish("blocks/7").ok());
  EXPECT_ERROR(b->fetch_published(std::string("a"), std::string("blocks/7")), ErrorCode::NotFound,
               "blocks/7");

  // Leaving etcd: the follower invalidates the peer.
  ASSERT_TRUE(a->withdraw_metadata().ok());
  EXPECT_TRUE(eventually([&] { return !b->has_remote("a"); }));
}

TEST(AgentEtcd, APeerThatDiesIsInvalidatedAndItsRestartIsLoaded) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  testing::use_transport(kTcp);
  auto b = make_agent("b", etcd_config(etcd));
  ASSERT_NE(b, nullptr);
  auto bbuf = make_buffer(1 << 16, 3);
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  const std::map<std::string, std::string> env = {{"KVBM_ETCD_ENDPOINTS", etcd.endpoint()},
                                                  {"KVBM_ETCD_PREFIX", "test/"},
                                                  {"AGENT_PEER_ETCD_TTL_S", "2"}};
  auto start_peer = [&](std::unique_ptr<testing::ChildProcess>& p, uint64_t seed) -> uint64_t {
    auto ready = testing::start_agent_peer(p, {"peer", "65536", std::to_string(seed)}, kTcp, env);
    if (!ready) return 0;
    std::istringstream in(*ready);
    int port = 0;
    uint64_t addr = 0;
    in >> port >> addr;
    EXPECT_EQ(p->ask("publish").value_or(""), "OK");
    return addr;
  };
  std::unique_ptr<testing::ChildProcess> peer;
  const uint64_t addr1 = start_peer(peer, 11);
  ASSERT_NE(addr1, 0u);
  ASSERT_TRUE(b->fetch_remote_metadata(std::string("peer")).ok());
  ASSERT_TRUE(
      testing::transfer(*b, Op::Read, dram(bbuf.addr(), 4096), dram(addr1, 4096), "peer").ok());
  EXPECT_EQ(testing::find_pattern_mismatch(bbuf.data(), 4096, 11), SIZE_MAX);

  // kill -9: nothing withdraws; the lease expires and the follower invalidates the peer.
  peer->kill_now();
  peer->wait();
  EXPECT_TRUE(eventually([&] { return !b->has_remote("peer"); }));

  // Restarted under the same name; fetched again, it is followed again, and a second
  // restart's metadata is loaded by the watch alone.
  const uint64_t addr2 = start_peer(peer, 12);
  ASSERT_NE(addr2, 0u);
  ASSERT_TRUE(b->fetch_remote_metadata(std::string("peer")).ok());
  peer->kill_now();
  peer->wait();
  std::unique_ptr<testing::ChildProcess> third;
  const uint64_t addr3 = start_peer(third, 13);
  ASSERT_NE(addr3, 0u);
  EXPECT_TRUE(eventually([&] {
    return b->has_remote("peer") &&
           testing::transfer(*b, Op::Read, dram(bbuf.addr(), 4096), dram(addr3, 4096), "peer").ok();
  }));
  EXPECT_EQ(testing::find_pattern_mismatch(bbuf.data(), 4096, 13), SIZE_MAX);
}

// An agent that replaced its worker after a peer over UCX's shared memory died writing
// into its receive queue (src/xfer/backends/ucx/receive_probe.h; the probe's answer is
// forced here) publishes its new metadata, and a peer that follows it through etcd loads
// it and reaches it again.
TEST(AgentEtcd, AReplacedWorkerIsPublishedAgainAndFollowersReachIt) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  const testing::Transport shm{"shm_ucx", "sm,self", "off"};
  testing::use_transport(shm);
  auto a = make_agent("a", etcd_config(etcd)), b = make_agent("b", etcd_config(etcd));
  ASSERT_TRUE(a && b);
  auto abuf = make_buffer(1 << 16, 5), bbuf = make_buffer(1 << 16, 6);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  ASSERT_TRUE(a->publish_metadata().ok());
  ASSERT_TRUE(b->fetch_remote_metadata(std::string("a")).ok());
  auto write_to_a = [&] {
    return testing::transfer(*b, Op::Write, dram(bbuf.addr(), 4096), dram(abuf.addr(), 4096), "a");
  };
  ASSERT_TRUE(write_to_a().ok());
  const auto before = a->local_metadata();
  ASSERT_TRUE(before.ok());

  std::unique_ptr<testing::ChildProcess> victim;
  auto ready = testing::start_agent_peer(victim, {"victim", "65536", "3"}, shm);
  ASSERT_TRUE(ready);
  std::istringstream in(*ready);
  int port = 0;
  uint64_t addr = 0;
  in >> port >> addr;
  ASSERT_TRUE(a->fetch_remote_metadata("127.0.0.1", static_cast<uint16_t>(port)).ok());
  setenv("KVBM_UCX_TEST_RECEIVE_BLOCKED", "1", 1);
  victim->kill_now();
  victim->wait();
  EXPECT_FALSE(
      testing::transfer(*a, Op::Read, dram(abuf.addr(), 4096), dram(addr, 4096), "victim").ok());
  unsetenv("KVBM_UCX_TEST_RECEIVE_BLOCKED");
  const auto after = a->local_metadata();
  ASSERT_TRUE(after.ok());
  ASSERT_NE(*after, *before) << "the worker was not replaced";

  // b's watch loads a's new metadata; its writes reach a again.
  testing::fill_pattern(bbuf.data(), 4096, 8);
  EXPECT_TRUE(eventually([&] { return write_to_a().ok(); }, 30s));
  a->progress();
  EXPECT_EQ(testing::find_pattern_mismatch(abuf.data(), 4096, 8), SIZE_MAX);
}

// Partial metadata in etcd: one key per region; registering one more writes that key only
// (the others, and the connection data, keep their revision); a fetching peer loads the
// union, and a second fetch merges what was added without replacing the peer.
TEST(AgentEtcd, OneMoreRegionWritesOneMoreKeyAndFetchingLoadsTheUnion) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  testing::use_transport(kTcp);
  auto a = make_agent("a", etcd_config(etcd)), b = make_agent("b", etcd_config(etcd));
  ASSERT_TRUE(a && b);
  auto client = detail::EtcdClient::create({etcd.endpoint()}, 2s);
  ASSERT_TRUE(client.ok());
  auto revisions = [&] {
    std::map<std::string, int64_t> out;
    for (const char* prefix : {"test/agents/a", "test/regions/a/"}) {
      auto kvs = (*client)->get_prefix(prefix);
      EXPECT_TRUE(kvs.ok()) << kvs.error().to_string();
      if (kvs) {
        for (const auto& kv : *kvs) out[kv.key] = kv.mod_revision;
      }
    }
    return out;
  };
  auto bbuf = make_buffer(1 << 16, 1);
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  std::vector<SystemStorage> abufs;
  for (uint64_t seed : {20, 21}) {
    abufs.push_back(make_buffer(1 << 16, seed));
    ASSERT_TRUE(a->register_storage(abufs.back()).ok());
  }
  ASSERT_TRUE(a->publish_metadata().ok());
  const auto before = revisions();
  ASSERT_EQ(before.size(), 3u);  // the connection data and two regions
  ASSERT_TRUE(b->fetch_remote_metadata(std::string("a")).ok());
  auto prepared =
      b->create_request(Op::Read, dram(bbuf.addr(), 4096), dram(abufs[0].addr(), 4096), "a");
  ASSERT_TRUE(prepared.ok());

  abufs.push_back(make_buffer(1 << 16, 22));
  ASSERT_TRUE(a->register_storage(abufs.back()).ok());
  ASSERT_TRUE(a->publish_metadata().ok());
  const auto after = revisions();
  ASSERT_EQ(after.size(), 4u);
  size_t written = 0;
  for (const auto& [key, rev] : after) written += before.count(key) == 0 || before.at(key) != rev;
  EXPECT_EQ(written, 1u) << "publishing one more region rewrote other keys";
  ASSERT_TRUE(a->publish_metadata().ok());  // nothing changed: nothing written
  EXPECT_EQ(revisions(), after);

  ASSERT_TRUE(b->fetch_remote_metadata(std::string("a")).ok());
  for (size_t i : {0, 2}) {
    ASSERT_TRUE(
        testing::transfer(*b, Op::Read, dram(bbuf.addr(), 4096), dram(abufs[i].addr(), 4096), "a")
            .ok());
    EXPECT_EQ(testing::find_pattern_mismatch(bbuf.data(), 4096, 20 + i), SIZE_MAX);
  }
  ASSERT_TRUE((*prepared)->post().ok());  // merged into the same incarnation, not replaced
  ASSERT_TRUE((*prepared)->wait(10s).ok());

  // A deregistered region's key goes with the next publish.
  ASSERT_TRUE(abufs[1].deregister(Agent::kRegistrationKey).ok());
  ASSERT_TRUE(a->publish_metadata().ok());
  EXPECT_EQ(revisions().size(), 3u);
}

TEST(AgentEtcd, EtcdAwayFailsNewDiscoveryOnlyAndRecovers) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  testing::use_transport(kTcp);
  auto a = make_agent("a", etcd_config(etcd)), b = make_agent("b", etcd_config(etcd));
  ASSERT_TRUE(a && b);
  auto abuf = make_buffer(1 << 16, 5), bbuf = make_buffer(1 << 16, 6);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  ASSERT_TRUE(a->publish_metadata().ok());
  ASSERT_TRUE(b->fetch_remote_metadata(std::string("a")).ok());

  etcd.kill();
  EXPECT_ERROR(b->fetch_remote_metadata(std::string("c")), ErrorCode::Io, "etcd unreachable");
  EXPECT_ERROR(a->publish("k", "v"), ErrorCode::Io, "etcd unreachable");
  // The connection made before keeps working.
  EXPECT_TRUE(
      testing::transfer(*b, Op::Read, dram(bbuf.addr(), 4096), dram(abuf.addr(), 4096), "a").ok());
  EXPECT_TRUE(b->has_remote("a"));

  ASSERT_TRUE(etcd.restart());
  // What failed to publish is put once etcd answers again; discovery works again.
  EXPECT_TRUE(
      eventually([&] { return b->fetch_published(std::string("a"), std::string("k")).ok(); }));
  EXPECT_TRUE(b->fetch_remote_metadata(std::string("a")).ok());
}

}  // namespace
}  // namespace kvbm::xfer
