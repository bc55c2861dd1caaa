// `kvbm serve` on one host and `kvbm bench xfer --peer` on the other: serve runs in a network
// namespace this test makes, the bench in ours, so the bytes cross a veth over UCX's TCP
// transport. The bench verifies the data (a pattern written, then read back) before it
// measures, and exits 1 when anything fails; its --json document is checked here. The
// served agent is found by its side channel address, or by name through a real etcd. Small
// sizes and few iterations: nothing here is timed.
#include <gtest/gtest.h>
#include <signal.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "common/subprocess.h"
#include "support/child_process.h"
#include "support/etcd_server.h"
#include "support/net_namespace.h"
#include "support/test_support.h"
#include "xfer/etcd_client.h"

namespace kvbm::testing {
namespace {

using namespace std::chrono_literals;

const std::string kKvbm = KVBM_CLI_PATH;

class ServeAcrossHosts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = NetNamespace::unavailable(); !why.empty()) GTEST_SKIP() << why;
    ns_ = std::make_unique<NetNamespace>();
    ASSERT_TRUE(ns_->ok()) << "could not make namespace " << ns_->name();
  }

  // `kvbm serve ARGS...` inside the namespace; returns its summary's lines.
  std::vector<std::string> start_serve(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kKvbm, "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    serve_ = std::make_unique<ChildProcess>(
        ns_->exec(argv), std::map<std::string, std::string>{{"UCX_TLS", "tcp,self"},
                                                            {"UCX_NET_DEVICES", ns_->peer_device()},
                                                            {"KVBM_UCX_SAME_HOST", "off"}});
    std::vector<std::string> lines;
    while (auto line = serve_->read_line(30s)) {
      lines.push_back(*line);
      if (line->rfind("Stop it with", 0) == 0) return lines;
    }
    ADD_FAILURE() << "kvbm serve did not start; it said: " << ::testing::PrintToString(lines);
    return lines;
  }

  // `kvbm bench xfer ARGS...` here, with stderr merged into what is returned; its status.
  std::pair<std::optional<int>, std::string> bench(const std::vector<std::string>& args,
                                                   bool with_stderr) {
    std::string cmd = kKvbm + " bench xfer";
    for (const auto& a : args) cmd += " '" + a + "'";
    if (with_stderr) cmd += " 2>&1";
    ChildProcess p({"/bin/sh", "-c", cmd}, {{"UCX_TLS", "tcp,self"},
                                            {"UCX_NET_DEVICES", ns_->host_device()},
                                            {"KVBM_UCX_SAME_HOST", "off"}});
    std::string out;
    while (auto line = p.read_line(60s)) out += *line + "\n";
    return {p.wait(30s), out};
  }

  // SIGTERM: serve stops in order (withdraws from etcd) and exits 0.
  void stop_serve() {
    ASSERT_EQ(::kill(serve_->pid(), SIGTERM), 0);
    EXPECT_EQ(serve_->wait(30s), std::optional<int>(0));
  }

  std::unique_ptr<NetNamespace> ns_;
  std::unique_ptr<ChildProcess> serve_;
};

// The side channel: serve prints where it listens; the bench finds buffer and file there.
TEST_F(ServeAcrossHosts, BenchXferPeerOverTheSideChannelVerifiesAndReportsJson) {
  auto lines = start_serve({"--name", "served", "--listen", ns_->peer_address() + ":0", "--bytes",
                            "1M", "--file", "4M"});
  std::string where;
  for (const auto& l : lines) {
    if (l.rfind("  side channel: ", 0) == 0) where = l.substr(16);
  }
  ASSERT_EQ(where.rfind(ns_->peer_address() + ":", 0), 0u) << where;
  auto [status, out] = bench(
      {"--peer", where, "--sizes", "64K", "--descs", "1,4", "--iters", "4", "--lat-sizes", "8",
       "--lat-iters", "16", "--rounds", "1", "--file-mib", "4", "--file-inflight", "4M", "--json"},
      false);
  ASSERT_EQ(status, std::optional<int>(0)) << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "not one JSON document: " << out;
  EXPECT_EQ(j["peer_agent"], "served");
  EXPECT_EQ(j["verified"], true);
  EXPECT_EQ(j["perftest"], false);  // a served peer: perftest cannot run its other end
  ASSERT_EQ(j["bandwidth"].size(), 4u) << out;
  for (const auto& row : j["bandwidth"]) EXPECT_GT(row["gbps"].get<double>(), 0) << row;
  EXPECT_EQ(j["latency"].size(), 2u) << out;
  EXPECT_EQ(j["file"]["rows"].size(), 4u) << out;  // WRITE, READ x 1 MiB, 4 MiB requests

  // A request larger than the served buffer: refused before anything moves, saying so.
  auto [bad_status, bad_out] =
      bench({"--peer", where, "--sizes", "2M", "--descs", "1", "--perftest", "none"}, true);
  EXPECT_EQ(bad_status, std::optional<int>(1)) << bad_out;
  EXPECT_NE(bad_out.find("the peer's buffer of 1048576 bytes is smaller than the largest request"),
            std::string::npos)
      << bad_out;
  stop_serve();

  // Nothing listens there any more: the bench names the address it could not reach.
  auto [gone_status, gone_out] = bench({"--peer", where, "--sizes", "4K", "--descs", "1"}, true);
  EXPECT_EQ(gone_status, std::optional<int>(1)) << gone_out;
  EXPECT_NE(gone_out.find(where), std::string::npos) << gone_out;
}

// --perftest: serve keeps a ucx_perftest server listening in its namespace and publishes its
// port; the bench runs ucx_perftest's client against it, so that every row has a ceiling
// measured in the same run across the veth. Only the figures' presence is checked.
TEST_F(ServeAcrossHosts, BenchXferPeerMeasuresUcxPerftestAgainstTheServedHost) {
  if (!kvbm::detail::find_program("ucx_perftest")) GTEST_SKIP() << "ucx_perftest not installed";
  auto lines = start_serve({"--name", "served-perf", "--listen", ns_->peer_address() + ":0",
                            "--bytes", "1M", "--perftest"});
  std::string where;
  bool announced = false;
  for (const auto& l : lines) {
    if (l.rfind("  side channel: ", 0) == 0) where = l.substr(16);
    announced |= l.rfind("  ucx_perftest: a server on port ", 0) == 0;
  }
  EXPECT_TRUE(announced) << ::testing::PrintToString(lines);
  auto [status, out] = bench({"--peer", where, "--sizes", "64K", "--descs", "1", "--iters", "4",
                              "--lat-sizes", "8", "--lat-iters", "16", "--rounds", "1", "--json"},
                             false);
  ASSERT_EQ(status, std::optional<int>(0)) << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "not one JSON document: " << out;
  EXPECT_EQ(j["perftest"], true);
  ASSERT_EQ(j["bandwidth"].size(), 2u) << out;  // WRITE, READ
  for (const auto& row : j["bandwidth"]) {
    ASSERT_TRUE(row["perftest_gbps_request"].is_number()) << row;
    EXPECT_GT(row["perftest_gbps_request"].get<double>(), 0) << row;
    EXPECT_TRUE(row["ratio_request"].is_number()) << row;
  }
  for (const auto& row : j["latency"]) EXPECT_TRUE(row["perftest_p50_us"].is_number()) << row;
  EXPECT_TRUE(j.contains("verdict")) << out;
  stop_serve();
}

// etcd: serve publishes under its name; the bench finds it by that name; SIGTERM withdraws it.
TEST_F(ServeAcrossHosts, BenchXferPeerEtcdFindsTheServedAgentByName) {
  KVBM_REQUIRE_ETCD();
  EtcdServer etcd(ns_->host_address());  // reachable from the namespace over the veth
  ASSERT_TRUE(etcd.ready());
  start_serve({"--name", "served-etcd", "--listen", "", "--etcd", etcd.endpoint(), "--etcd-prefix",
               "serve-test/", "--bytes", "256K"});
  auto [status, out] =
      bench({"--peer-etcd", "served-etcd", "--etcd", etcd.endpoint(), "--etcd-prefix",
             "serve-test/", "--sizes", "64K", "--descs", "1,4", "--iters", "4", "--lat-sizes", "8",
             "--lat-iters", "16", "--rounds", "1", "--json"},
            false);
  ASSERT_EQ(status, std::optional<int>(0)) << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "not one JSON document: " << out;
  EXPECT_EQ(j["peer_agent"], "served-etcd");
  EXPECT_EQ(j["verified"], true);
  EXPECT_EQ(j["bandwidth"].size(), 4u) << out;

  stop_serve();
  auto client = xfer::detail::EtcdClient::create({etcd.endpoint()}, 2s);
  ASSERT_TRUE(client.ok()) << client.error().to_string();
  auto key = (*client)->get("serve-test/agents/served-etcd");
  ASSERT_TRUE(key.ok()) << key.error().to_string();
  EXPECT_FALSE(key->has_value()) << "serve left its metadata in etcd after SIGTERM";

  // No such agent: the bench says which name it looked for.
  auto [none_status, none_out] = bench(
      {"--peer-etcd", "served-etcd", "--etcd", etcd.endpoint(), "--etcd-prefix", "serve-test/"},
      true);
  EXPECT_EQ(none_status, std::optional<int>(1)) << none_out;
  EXPECT_NE(none_out.find("no agent 'served-etcd' in etcd"), std::string::npos) << none_out;
}

}  // namespace
}  // namespace kvbm::testing
