// Two hosts: the peer agent runs in a network namespace this test makes, so the bytes cross
// a veth pair over UCX's TCP transport (the same-host path is off, as between machines).
// READ and WRITE verified; a partition and a kill -9 mid-request fail the request within
// the peer timeout and leave the agent serving its other peers; a restarted peer is
// fetched again and transfers resume. Skipped without root or iproute2.
#include <gtest/gtest.h>

#include <cstring>
#include <sstream>
#include <thread>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/child_process.h"
#include "support/etcd_server.h"
#include "support/net_namespace.h"
#include "support/test_support.h"
#include "support/two_process.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::dram;

constexpr size_t kPeerBytes = 64 << 20;

// The peer agent inside the namespace, serving its metadata on its veth address.
struct RemotePeer {
  std::unique_ptr<ChildProcess> process;
  uint16_t port = 0;
  uint64_t addr = 0;

  bool start(const testing::NetNamespace& ns, uint64_t seed,
             std::map<std::string, std::string> env = {}) {
    env.insert({{"UCX_TLS", "tcp,self"},
                {"UCX_NET_DEVICES", ns.peer_device()},
                {"KVBM_UCX_SAME_HOST", "off"},
                {"AGENT_PEER_LISTEN", ns.peer_address()}});
    process =
        std::make_unique<ChildProcess>(ns.exec({testing::helper_path("agent_peer"), "remote",
                                                std::to_string(kPeerBytes), std::to_string(seed)}),
                                       std::move(env));
    auto ready = process->read_line();
    if (!ready || ready->rfind("READY ", 0) != 0) {
      ADD_FAILURE() << "peer in " << ns.name() << " did not start: " << ready.value_or("<none>");
      return false;
    }
    std::istringstream in(ready->substr(6));
    in >> port >> addr;
    return port != 0;
  }
};

class TwoHosts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = testing::NetNamespace::unavailable(); !why.empty()) GTEST_SKIP() << why;
    ns_ = std::make_unique<testing::NetNamespace>();
    ASSERT_TRUE(ns_->ok()) << "could not make namespace " << ns_->name();
    // Our agent reaches the peer through our end of the veth only, over TCP.
    setenv("UCX_TLS", "tcp,self", 1);
    setenv("UCX_NET_DEVICES", (ns_->host_device() + ",lo").c_str(), 1);
    setenv("KVBM_UCX_SAME_HOST", "off", 1);
    AgentConfig c;
    c.add_cuda_if_gpu = false;
    c.peer_timeout = testing::peer_timeout();
    auto a = Agent::create("local", c);
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    agent_ = std::move(*a);
    auto buf = SystemAllocator().allocate(kPeerBytes);
    ASSERT_TRUE(buf.ok());
    buf_ = std::make_unique<SystemStorage>(std::move(*buf));
    ASSERT_TRUE(agent_->register_storage(*buf_).ok());
  }
  void TearDown() override {
    unsetenv("UCX_NET_DEVICES");
    if (ns_) ns_->set_link(true);
  }

  Status read(const RemotePeer& peer, size_t len) {
    return testing::transfer(*agent_, Op::Read, dram(buf_->addr(), len), dram(peer.addr, len),
                             "remote");
  }

  std::unique_ptr<testing::NetNamespace> ns_;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<SystemStorage> buf_;
};

TEST_F(TwoHosts, ReadAndWriteCrossTheLinkIntact) {
  RemotePeer peer;
  ASSERT_TRUE(peer.start(*ns_, 21));
  auto name = agent_->fetch_remote_metadata(ns_->peer_address(), peer.port);
  ASSERT_TRUE(name.ok()) << name.error().to_string();
  const size_t len = 8 << 20;
  ASSERT_TRUE(read(peer, len).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), len, 21), SIZE_MAX);
  testing::fill_pattern(buf_->data(), len, 22);
  ASSERT_TRUE(testing::transfer(*agent_, Op::Write, dram(buf_->addr(), len), dram(peer.addr, len),
                                "remote", "written")
                  .ok());
  EXPECT_EQ(peer.process->ask("expect written 10000 0 " + std::to_string(len) + " 22 0"), "OK");
}

// A request in flight when the peer's link goes (inside its namespace): an error within the bound,
// never a success with bytes that did not arrive; an agent on this host is served meanwhile; after
// the link returns and the peer is fetched again, transfers resume.
TEST_F(TwoHosts, APartitionFailsTheRequestWithinThePeerTimeout) {
  RemotePeer peer;
  ASSERT_TRUE(peer.start(*ns_, 31));
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), peer.port).ok());
  std::unique_ptr<ChildProcess> local_peer;  // another peer, on this host's loopback
  auto ready = testing::start_agent_peer(local_peer, {"near", "1048576", "41"},
                                         testing::Transport{"tcp", "tcp,self", "off"});
  ASSERT_TRUE(ready.has_value());
  std::istringstream in(*ready);
  int near_port = 0;
  uint64_t near_addr = 0;
  in >> near_port >> near_addr;
  ASSERT_TRUE(agent_->fetch_remote_metadata("127.0.0.1", static_cast<uint16_t>(near_port)).ok());

  std::memset(buf_->data(), 0, kPeerBytes);
  auto req = agent_->create_request(Op::Read, dram(buf_->addr(), kPeerBytes),
                                    dram(peer.addr, kPeerBytes), "remote");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  ASSERT_TRUE(ns_->set_peer_link(false));  // the peer's host loses its network
  const auto start = std::chrono::steady_clock::now();
  Status st = (*req)->wait(testing::peer_timeout() * 4);
  const auto took = std::chrono::steady_clock::now() - start;
  if (st.ok()) {
    // Finished before the link went: then every byte must be there.
    EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), kPeerBytes, 31), SIZE_MAX);
  } else {
    // It ended (failed, naming the peer), rather than our wait giving up.
    EXPECT_EQ((*req)->state(), XferState::Error) << st.error().to_string();
    EXPECT_NE(st.error().message.find("'remote'"), std::string::npos) << st.error().to_string();
    EXPECT_LE(took, testing::peer_timeout() * 3) << st.error().to_string();
  }
  // The other peer is served while the partition lasts.
  ASSERT_TRUE(testing::transfer(*agent_, Op::Read, dram(buf_->addr(), 1 << 20),
                                dram(near_addr, 1 << 20), "near")
                  .ok());
  EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), 1 << 20, 41), SIZE_MAX);

  ASSERT_TRUE(ns_->set_peer_link(true));
  peer.process->kill_now();
  RemotePeer again;
  ASSERT_TRUE(again.start(*ns_, 32));
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), again.port).ok());
  ASSERT_TRUE(read(again, 4 << 20).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), 4 << 20, 32), SIZE_MAX);
}

TEST_F(TwoHosts, APeerKilledMidRequestFailsItAndARestartIsServed) {
  RemotePeer peer;
  ASSERT_TRUE(peer.start(*ns_, 51));
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), peer.port).ok());
  std::memset(buf_->data(), 0, kPeerBytes);
  auto req = agent_->create_request(Op::Read, dram(buf_->addr(), kPeerBytes),
                                    dram(peer.addr, kPeerBytes), "remote");
  ASSERT_TRUE(req.ok());
  ASSERT_TRUE((*req)->post().ok());
  peer.process->kill_now();
  Status st = (*req)->wait(testing::peer_timeout() * 4);
  if (st.ok()) {
    EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), kPeerBytes, 51), SIZE_MAX);
  } else {
    EXPECT_EQ((*req)->state(), XferState::Error) << st.error().to_string();
    EXPECT_NE(st.error().message.find("'remote'"), std::string::npos) << st.error().to_string();
  }
  RemotePeer again;
  ASSERT_TRUE(again.start(*ns_, 52));
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), again.port).ok());
  ASSERT_TRUE(read(again, 4 << 20).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), 4 << 20, 52), SIZE_MAX);
}

// Agent::connect sets up a loaded peer's endpoint before the first request; errors name the
// peer: one never loaded, and one that cannot be reached (the link is down).
TEST_F(TwoHosts, ConnectSetsUpALoadedPeerAndNamesThePeerItCannotReach) {
  EXPECT_ERROR(agent_->connect("remote"), ErrorCode::NotFound, "agent 'remote' is not known");
  RemotePeer peer;
  ASSERT_TRUE(peer.start(*ns_, 61));
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), peer.port).ok());
  Status st = agent_->connect("remote");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_TRUE(agent_->connect("remote").ok());  // again: nothing left to do
  ASSERT_TRUE(read(peer, 4096).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(buf_->data(), 4096, 61), SIZE_MAX);

  // Loaded again while the link is down: connect fails within the peer timeout, naming it,
  // and the peer counts as failed until its metadata is loaded again.
  ASSERT_TRUE(agent_->fetch_remote_metadata(ns_->peer_address(), peer.port).ok());
  ASSERT_TRUE(ns_->set_link(false));
  EXPECT_ERROR(agent_->connect("remote"), ErrorCode::Timeout,
               "connecting to agent 'remote' over UCX: no answer within");
  EXPECT_ERROR(agent_->connect("remote"), ErrorCode::Remote, "agent 'remote' failed");
  ASSERT_TRUE(ns_->set_link(true));
  auto fetched = agent_->fetch_remote_metadata(ns_->peer_address(), peer.port);
  ASSERT_TRUE(fetched.ok()) << fetched.error().to_string();
  st = agent_->connect("remote");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  st = read(peer, 4096);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
}

// The peer found through etcd (on our end of the veth): killed with -9 mid-request, the
// request fails (or, done before, has every byte); restarted under the same name, it is
// rediscovered by the etcd watch alone (whether its old lease expired first or not) and
// transfers resume, verified.
TEST_F(TwoHosts, ThroughEtcdAKilledPeerIsRediscoveredAfterItsRestart) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd(ns_->host_address());
  ASSERT_TRUE(etcd.ready());
  AgentConfig c;
  c.add_cuda_if_gpu = false;
  c.peer_timeout = testing::peer_timeout();
  c.etcd_endpoints = {etcd.endpoint()};
  c.etcd_prefix = "hosts/";
  c.etcd_lease_ttl = 2s;
  auto made = Agent::create("local-etcd", c);
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  Agent& agent = **made;
  auto local = SystemAllocator().allocate(kPeerBytes);
  ASSERT_TRUE(local.ok());
  ASSERT_TRUE(agent.register_storage(*local).ok());
  const std::map<std::string, std::string> env = {{"KVBM_ETCD_ENDPOINTS", etcd.endpoint()},
                                                  {"KVBM_ETCD_PREFIX", "hosts/"},
                                                  {"AGENT_PEER_ETCD_TTL_S", "2"}};
  RemotePeer peer;
  ASSERT_TRUE(peer.start(*ns_, 71, env));
  ASSERT_EQ(peer.process->ask("publish").value_or(""), "OK");
  ASSERT_EQ(agent.fetch_remote_metadata(std::string("remote")).value_or(""), "remote");

  std::memset(local->data(), 0, kPeerBytes);
  auto req = agent.create_request(Op::Read, dram(local->addr(), kPeerBytes),
                                  dram(peer.addr, kPeerBytes), "remote");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  peer.process->kill_now();
  Status st = (*req)->wait(testing::peer_timeout() * 4);
  if (st.ok()) {
    EXPECT_EQ(testing::find_pattern_mismatch(local->data(), kPeerBytes, 71), SIZE_MAX);
  } else {
    EXPECT_EQ((*req)->state(), XferState::Error) << st.error().to_string();
    EXPECT_NE(st.error().message.find("'remote'"), std::string::npos) << st.error().to_string();
  }

  RemotePeer again;
  ASSERT_TRUE(again.start(*ns_, 72, env));
  ASSERT_EQ(again.process->ask("publish").value_or(""), "OK");
  // No fetch here: the watch loads the restart's metadata.
  bool resumed = false;
  for (int i = 0; i < 750 && !resumed; ++i) {
    resumed = agent.has_remote("remote") &&
              testing::transfer(agent, Op::Read, dram(local->addr(), 1 << 20),
                                dram(again.addr, 1 << 20), "remote")
                  .ok();
    if (!resumed) std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(resumed) << "the restarted peer was not rediscovered through etcd";
  EXPECT_EQ(testing::find_pattern_mismatch(local->data(), 1 << 20, 72), SIZE_MAX);
}

// 20 ms of delay each way and 1% of the frames lost (a link emulated in user space, so that
// it runs on kernels without tc netem): READ and WRITE arrive intact.
TEST_F(TwoHosts, DelayAndLossLeaveTheBytesIntact) {
  testing::NetNamespace lossy(testing::NetNamespace::Link::Emulated);
  ASSERT_TRUE(lossy.ok()) << lossy.why_not();
  lossy.emulator()->impair(20ms, 0.01);
  setenv("UCX_NET_DEVICES", (lossy.host_device() + ",lo").c_str(), 1);
  AgentConfig c;
  c.add_cuda_if_gpu = false;
  c.peer_timeout = testing::peer_timeout() * 10;  // a lossy link is slow, not dead
  auto made = Agent::create("local-lossy", c);
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  Agent& agent = **made;
  const size_t len = 1 << 20;
  auto local = SystemAllocator().allocate(len);
  ASSERT_TRUE(local.ok());
  ASSERT_TRUE(agent.register_storage(*local).ok());
  RemotePeer peer;
  ASSERT_TRUE(peer.start(lossy, 81));
  ASSERT_TRUE(agent.fetch_remote_metadata(lossy.peer_address(), peer.port, 30s).ok());

  // The link is in the path: a small READ takes at least the round trip's 40 ms.
  ASSERT_TRUE(agent.connect("remote").ok());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(
      testing::transfer(agent, Op::Read, dram(local->addr(), 8), dram(peer.addr, 8), "remote")
          .ok());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 40ms);

  ASSERT_TRUE(
      testing::transfer(agent, Op::Read, dram(local->addr(), len), dram(peer.addr, len), "remote")
          .ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local->data(), len, 81), SIZE_MAX);
  testing::fill_pattern(local->data(), len, 82);
  ASSERT_TRUE(testing::transfer(agent, Op::Write, dram(local->addr(), len), dram(peer.addr, len),
                                "remote", "written")
                  .ok());
  EXPECT_EQ(peer.process->ask("expect written 30000 0 " + std::to_string(len) + " 82 0", 60s),
            "OK");
  EXPECT_GT(lossy.emulator()->dropped(), 0u) << "the link lost no frame: the test proves nothing";
  EXPECT_GT(lossy.emulator()->forwarded(), 1000u);
}

}  // namespace
}  // namespace kvbm::xfer
