// Why the remote layer exists, end to end in two processes: this test is process A; it
// allocates host storage, registers it, and publishes a RemoteDescriptor (with a
// notification) under a key on its side channel. Process B
// (tests/integration/remote_peer) is told only A's host, port and the key: it fetches
// the descriptor and A's metadata over the side channel, READs the bytes, checks every
// one, and A receives the notification. Also: sub-regions, the JSON form, and what B
// gets for bad descriptors and unknown keys.
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

  // Publishes `desc` under `key` and asks B to READ it, expecting pattern kSeed from
  // pattern offset `poff`. B gets the host, the port and the key, nothing more.
  std::string read(const std::string& key, const RemoteDescriptor& desc, bool json, size_t poff,
                   bool reload = false) {
    const Status published =
        json ? agent_->publish(key, desc.to_json()) : publish_descriptor(*agent_, key, desc);
    if (!published) return "<publish failed: " + published.error().to_string() + ">";
    return ask_read(json ? "json" : "bytes", key, poff, reload);
  }
  std::string ask_read(const std::string& form, const std::string& key, size_t poff,
                       bool reload = false) {
    return peer_
        ->ask("read " + form + " 127.0.0.1 " + std::to_string(port_) + " " + key + " " +
                  std::to_string(kSeed) + " " + std::to_string(poff) + (reload ? " reload" : ""),
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
  EXPECT_EQ(read("prefill/blocks-0-63", *desc, /*json=*/false, 0), "OK " + std::to_string(kBytes));
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
  EXPECT_EQ(read("sub/json", d, /*json=*/true, off), "OK " + std::to_string(len));
  auto tail = whole->slice(kBytes - 100, 100);
  ASSERT_TRUE(tail.ok());
  d = RemoteDescriptor(*tail, "prefill-a");
  d.set_notif(std::string("bin\0ary", 7));
  EXPECT_EQ(read("sub/tail", d, /*json=*/false, kBytes - 100), "OK 100");
  auto got = notifs(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].message, "json sub-region");
  EXPECT_EQ(got[1].message, std::string("bin\0ary", 7)) << "notification bytes are exact";
}

TEST_F(RemoteEndToEnd, BadDescriptorsFailCleanlyInB) {
  // Nothing published under the key: B's error names it.
  const std::string missing = ask_read("bytes", "nothing/here", 0);
  EXPECT_EQ(missing.rfind("ERR Remote", 0), 0u) << missing;
  EXPECT_NE(missing.find("no item 'nothing/here' published by agent 'prefill-a'"),
            std::string::npos)
      << missing;
  // Not a descriptor at all (published as raw bytes).
  ASSERT_TRUE(agent_->publish("junk", std::string("\x00\xff\x13", 3)).ok());
  EXPECT_EQ(ask_read("bytes", "junk", 0).rfind("ERR InvalidArgument", 0), 0u);
  ASSERT_TRUE(agent_->publish("junk.json", "{\"v\":2}").ok());
  EXPECT_EQ(ask_read("json", "junk.json", 0).rfind("ERR InvalidArgument", 0), 0u);
  // A range A never registered: B's request is refused before anything moves.
  RemoteDescriptor outside(RemoteStorage(storage_->addr() + kBytes, 4096, xfer::MemType::Dram, 0),
                           "prefill-a");
  EXPECT_EQ(read("outside", outside, false, 0).rfind("ERR ", 0), 0u);
  // An agent other than the one B fetched it from (publish_descriptor refuses this, so
  // as raw bytes).
  RemoteDescriptor stranger(*remote_storage_of(*storage_), "nobody");
  EXPECT_FALSE(publish_descriptor(*agent_, "stranger", stranger).ok());
  ASSERT_TRUE(agent_->publish("stranger", stranger.to_bytes()).ok());
  const std::string got = ask_read("bytes", "stranger", 0);
  EXPECT_EQ(got.rfind("ERR InvalidArgument", 0), 0u) << got;
  EXPECT_NE(got.find("nobody"), std::string::npos) << got;
  // Once A deregisters, B (with fresh metadata) can no longer read it.
  auto desc = remote_descriptor_of(*storage_);
  ASSERT_TRUE(desc.ok());
  ASSERT_TRUE(publish_descriptor(*agent_, "whole", *desc).ok());
  ASSERT_TRUE(deregister_from_agent(*storage_).ok());
  EXPECT_EQ(ask_read("bytes", "whole", 0, /*reload=*/true).rfind("ERR ", 0), 0u);
  // And again once it registers anew (the descriptor still published).
  ASSERT_TRUE(register_with_agent(*storage_, *agent_).ok());
  EXPECT_EQ(ask_read("bytes", "whole", 0, /*reload=*/true), "OK " + std::to_string(kBytes));
  // Withdrawn: B can no longer fetch it.
  ASSERT_TRUE(agent_->unpublish("whole").ok());
  EXPECT_EQ(ask_read("bytes", "whole", 0).rfind("ERR Remote", 0), 0u);
}

TEST_F(RemoteEndToEnd, ManyDescriptorsUnderTheirOwnKeys) {
  // A publishes one descriptor per 1 MiB block, each with its own notification; B reads
  // them by key, loading A's metadata once.
  auto whole = remote_storage_of(*storage_);
  ASSERT_TRUE(whole.has_value());
  constexpr size_t kBlock = 1 << 20;
  for (size_t i = 0; i < kBytes / kBlock; ++i) {
    RemoteDescriptor d(*whole->slice(i * kBlock, kBlock), "prefill-a");
    d.set_notif("block " + std::to_string(i));
    ASSERT_TRUE(publish_descriptor(*agent_, "block/" + std::to_string(i), d).ok());
  }
  for (size_t i = kBytes / kBlock; i-- > 0;) {
    EXPECT_EQ(ask_read("bytes", "block/" + std::to_string(i), i * kBlock),
              "OK " + std::to_string(kBlock));
  }
  auto got = notifs(kBytes / kBlock);
  ASSERT_EQ(got.size(), kBytes / kBlock);
  for (size_t n = 0; n < got.size(); ++n) {
    EXPECT_EQ(got[n],
              (xfer::Notification{"decode-b", "block " + std::to_string(got.size() - 1 - n)}));
  }
}

}  // namespace
}  // namespace kvbm
