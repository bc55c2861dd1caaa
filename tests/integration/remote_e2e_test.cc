// Why the remote layer exists, end to end in two processes: this test is process A; it
// allocates host storage, registers it, and hands a RemoteDescriptor (with a
// notification) to process B (tests/integration/remote_peer) over B's stdin. B fetches
// A's metadata over the side channel, READs the bytes, checks every one, and A receives
// the notification. Also: sub-regions, the JSON form, and what B gets for bad descriptors.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/child_process.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;

constexpr size_t kBytes = 8 << 20;
constexpr uint64_t kSeed = 29;

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

class RemoteEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    auto agent = xfer::Agent::create("prefill-a");
    ASSERT_TRUE(agent.ok()) << agent.error().to_string();
    agent_ = std::move(*agent);
    auto s = SystemAllocator().allocate(kBytes);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    storage_ = std::make_unique<SystemStorage>(std::move(*s));
    testing::fill_pattern(storage_->data(), kBytes, kSeed);
    ASSERT_TRUE(register_with_agent(*storage_, *agent_).ok());
    auto port = agent_->listen("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.error().to_string();
    port_ = *port;
    peer_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{testing::helper_path("remote_peer"), "decode-b"});
    ASSERT_EQ(peer_->read_line().value_or("<nothing>"), "READY");
  }
  void TearDown() override {
    if (peer_ && peer_->started()) {
      peer_->send("quit");
      EXPECT_EQ(peer_->wait().value_or(-1), 0);
    }
  }

  // Asks B to READ what `desc` names, expecting pattern kSeed from pattern offset `poff`.
  std::string read(const RemoteDescriptor& desc, bool json, size_t poff) {
    const std::string form = json ? "json" : "bytes";
    const std::string hex = to_hex(json ? desc.to_json() : desc.to_bytes());
    return ask_read(form, hex, poff);
  }
  std::string ask_read(const std::string& form, const std::string& hex, size_t poff) {
    return peer_
        ->ask("read " + form + " " + hex + " " + std::to_string(port_) + " " +
                  std::to_string(kSeed) + " " + std::to_string(poff),
              120s)
        .value_or("<no reply>");
  }

  // The notifications A has received, waiting (bounded) until `count` arrived.
  std::vector<xfer::Notification> notifs(size_t count) {
    std::vector<xfer::Notification> got;
    for (auto until = std::chrono::steady_clock::now() + 60s;
         got.size() < count && std::chrono::steady_clock::now() < until;) {
      for (auto& n : agent_->get_notifs()) got.push_back(std::move(n));
      if (got.size() < count) std::this_thread::sleep_for(1ms);
    }
    return got;
  }

  std::unique_ptr<xfer::Agent> agent_;
  std::unique_ptr<SystemStorage> storage_;
  uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> peer_;
};

TEST_F(RemoteEndToEnd, ReadWholeStorageAndNotify) {
  auto desc = remote_descriptor_of(*storage_);
  ASSERT_TRUE(desc.ok()) << desc.error().to_string();
  desc->set_notif("blocks 0-63 received");
  EXPECT_EQ(read(*desc, /*json=*/false, 0), "OK " + std::to_string(kBytes));
  auto got = notifs(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (xfer::Notification{"decode-b", "blocks 0-63 received"}));
}

TEST_F(RemoteEndToEnd, ReadSubRegionsInBothForms) {
  auto whole = remote_storage_of(*storage_);
  ASSERT_TRUE(whole.has_value());
  const size_t off = 3 * 4096 + 17, len = 1 << 20;
  auto sub = RemoteStorage::from_storage_with_offset(*storage_, off, len);
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(*sub, *whole->slice(off, len));
  RemoteDescriptor d(*sub, "prefill-a");
  d.set_notif("json sub-region");
  EXPECT_EQ(read(d, /*json=*/true, off), "OK " + std::to_string(len));
  auto tail = whole->slice(kBytes - 100, 100);
  ASSERT_TRUE(tail.ok());
  d = RemoteDescriptor(*tail, "prefill-a");
  d.set_notif(std::string("bin\0ary", 7));
  EXPECT_EQ(read(d, /*json=*/false, kBytes - 100), "OK 100");
  auto got = notifs(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].message, "json sub-region");
  EXPECT_EQ(got[1].message, std::string("bin\0ary", 7)) << "notification bytes are exact";
}

TEST_F(RemoteEndToEnd, BadDescriptorsFailCleanlyInB) {
  // Not a descriptor at all.
  EXPECT_EQ(ask_read("bytes", "00ff13", 0).rfind("ERR InvalidArgument", 0), 0u);
  EXPECT_EQ(ask_read("json", to_hex("{\"v\":2}"), 0).rfind("ERR InvalidArgument", 0), 0u);
  // A range A never registered: B's request is refused before anything moves.
  RemoteDescriptor outside(RemoteStorage(storage_->addr() + kBytes, 4096, xfer::MemType::Dram, 0),
                           "prefill-a");
  EXPECT_EQ(read(outside, false, 0).rfind("ERR ", 0), 0u);
  // An agent B does not know.
  RemoteDescriptor stranger(*remote_storage_of(*storage_), "nobody");
  EXPECT_NE(read(stranger, false, 0).find("nobody"), std::string::npos);
  // Once A deregisters, B (with fresh metadata) can no longer read it.
  auto desc = remote_descriptor_of(*storage_);
  ASSERT_TRUE(desc.ok());
  ASSERT_TRUE(deregister_from_agent(*storage_).ok());
  EXPECT_EQ(read(*desc, false, 0).rfind("ERR ", 0), 0u);
  // And again once it registers anew.
  ASSERT_TRUE(register_with_agent(*storage_, *agent_).ok());
  EXPECT_EQ(read(*desc, false, 0), "OK " + std::to_string(kBytes));
}

}  // namespace
}  // namespace kvbm
