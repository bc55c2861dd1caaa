// The etcd client (src/xfer/etcd_client.h) against a real etcd started by each test.
#include "xfer/etcd_client.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "support/etcd_server.h"
#include "support/test_support.h"

namespace kvbm::xfer::detail {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<EtcdClient> client_for(const std::vector<std::string>& endpoints) {
  auto c = EtcdClient::create(endpoints, 2s);
  EXPECT_TRUE(c.ok()) << c.error().to_string();
  return c.ok() ? std::move(*c) : nullptr;
}

// Events seen by a watch, waited for by the test.
struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<EtcdEvent> events;
  std::vector<Error> errors;

  void add(const EtcdEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
    cv.notify_all();
  }
  void fail(const Error& e) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(e);
    cv.notify_all();
  }
  bool wait_events(size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return events.size() >= n; });
  }
  bool wait_errors(size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return errors.size() >= n; });
  }
};

// A real etcd per test, and a client of it.
class LiveEtcd : public ::testing::Test {
 protected:
  void SetUp() override {
    KVBM_REQUIRE_ETCD();
    etcd_ = std::make_unique<testing::EtcdServer>();
    ASSERT_TRUE(etcd_->ready());
    c_ = client_for({etcd_->endpoint()});
    ASSERT_NE(c_, nullptr);
  }
  std::unique_ptr<testing::EtcdServer> etcd_;
  std::unique_ptr<EtcdClient> c_;
};

TEST(Base64, RoundTripsEveryLengthAndRejectsGarbage) {
  std::string bytes;
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes) << "length " << i;
    bytes.push_back(static_cast<char>(i * 37 + 1));
  }
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_FALSE(base64_decode("Zm9").has_value());   // not a multiple of 4
  EXPECT_FALSE(base64_decode("Zm=v").has_value());  // padding inside
  EXPECT_FALSE(base64_decode("Zm9v!A==").has_value());
}

TEST(EtcdClient, RejectsBadEndpoints) {
  EXPECT_ERROR(EtcdClient::create({}, 1s), ErrorCode::InvalidArgument, "no endpoints");
  EXPECT_ERROR(EtcdClient::create({"https://127.0.0.1:2379"}, 1s), ErrorCode::InvalidArgument,
               "'https://127.0.0.1:2379' is not http://host:port");
  EXPECT_ERROR(EtcdClient::create({"127.0.0.1:2379"}, 0ms), ErrorCode::InvalidArgument,
               "timeout 0 ms");
}

TEST(EtcdClient, UnreachableIsAnIoErrorNamingTheEndpoints) {
  const int port = testing::free_tcp_port();
  auto c = client_for({"127.0.0.1:" + std::to_string(port)});
  ASSERT_NE(c, nullptr);
  EXPECT_ERROR(c->put("k", "v"), ErrorCode::Io,
               "etcd unreachable (http://127.0.0.1:" + std::to_string(port));
  EXPECT_ERROR(EtcdWatch::start(*c, "p/", [](const EtcdEvent&) {}), ErrorCode::Io, "etcd watch");
}

TEST_F(LiveEtcd, PutGetPrefixDelete) {
  auto& c = c_;
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(c->put("kvbm/agents/a", binary).ok());
  ASSERT_TRUE(c->put("kvbm/agents/b", "B").ok());
  ASSERT_TRUE(c->put("kvbm/agentsX", "not under the prefix").ok());
  auto v = c->get("kvbm/agents/a");
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  EXPECT_EQ(*v, binary);
  auto missing = c->get("kvbm/agents/none");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  auto all = c->get_prefix("kvbm/agents/");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].key, "kvbm/agents/a");
  EXPECT_EQ((*all)[1].value, "B");
  auto deleted = c->del("kvbm/agents/a");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 1);
  EXPECT_FALSE(c->get("kvbm/agents/a")->has_value());
  EXPECT_EQ(*c->del("kvbm/agents/a"), 0);
}

TEST(EtcdClient, AFirstEndpointThatIsDownIsSkipped) {
  KVBM_REQUIRE_ETCD();
  testing::EtcdServer etcd;
  ASSERT_TRUE(etcd.ready());
  auto c = client_for({"127.0.0.1:" + std::to_string(testing::free_tcp_port()), etcd.endpoint()});
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->put("k", "v").ok());
  EXPECT_EQ(c->get("k")->value_or(""), "v");
}

TEST_F(LiveEtcd, KeysOfARevokedLeaseAreGoneAndItsKeepAliveFails) {
  auto& c = c_;
  auto lease = c->grant_lease(30s);
  ASSERT_TRUE(lease.ok()) << lease.error().to_string();
  ASSERT_TRUE(c->put("leased", "x", *lease).ok());
  EXPECT_TRUE(c->keep_alive(*lease).ok());
  ASSERT_TRUE(c->revoke_lease(*lease).ok());
  EXPECT_FALSE(c->get("leased")->has_value());
  EXPECT_ERROR(c->keep_alive(*lease), ErrorCode::NotFound, "expired");
  EXPECT_ERROR(c->put("k", "v", *lease), ErrorCode::InvalidArgument, "lease not found");
}

TEST_F(LiveEtcd, WatchSeesPutsAndDeletesUnderItsPrefixOnly) {
  auto& c = c_;
  Seen seen;
  auto w = EtcdWatch::start(*c, "kvbm/agents/", [&](const EtcdEvent& e) { seen.add(e); });
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  ASSERT_TRUE(c->put("kvbm/other", "ignored").ok());
  ASSERT_TRUE(c->put("kvbm/agents/a", "1").ok());
  ASSERT_TRUE(c->del("kvbm/agents/a").ok());
  ASSERT_TRUE(seen.wait_events(2));
  std::lock_guard<std::mutex> lock(seen.mu);
  ASSERT_EQ(seen.events.size(), 2u);
  EXPECT_EQ(seen.events[0].type, EtcdEvent::Type::Put);
  EXPECT_EQ(seen.events[0].key, "kvbm/agents/a");
  EXPECT_EQ(seen.events[0].value, "1");
  EXPECT_EQ(seen.events[1].type, EtcdEvent::Type::Delete);
  EXPECT_EQ(seen.events[1].key, "kvbm/agents/a");
}

TEST_F(LiveEtcd, WatchReportsABreakAndResumesWhenEtcdReturns) {
  auto& etcd = *etcd_;
  auto& c = c_;
  Seen seen;
  auto w = EtcdWatch::start(
      *c, "p/", [&](const EtcdEvent& e) { seen.add(e); }, [&](const Error& e) { seen.fail(e); });
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  etcd.kill();
  ASSERT_TRUE(seen.wait_errors(1));
  EXPECT_ERROR(c->put("p/x", "lost"), ErrorCode::Io, "etcd unreachable");
  ASSERT_TRUE(etcd.restart());
  ASSERT_TRUE(c->put("p/x", "after").ok());
  ASSERT_TRUE(seen.wait_events(1, 20s));
  std::lock_guard<std::mutex> lock(seen.mu);
  EXPECT_EQ(seen.events.back().value, "after");
}

TEST_F(LiveEtcd, WatchStopsPromptlyWhileIdle) {
  auto& c = c_;
  auto w = EtcdWatch::start(*c, "p/", [](const EtcdEvent&) {});
  ASSERT_TRUE(w.ok());
  (*w)->stop();  // must return (the test's timeout guards it); a second stop is harmless
  (*w)->stop();
}

}  // namespace
}  // namespace kvbm::xfer::detail
