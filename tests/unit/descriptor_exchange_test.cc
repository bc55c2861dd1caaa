// Descriptors over the side channel (kvbm/remote/descriptor_exchange.h), two agents in
// one process: publish_descriptor's agent check, fetch_descriptor's decoding and
// metadata loading (only when unknown, or always with Reload), and every error path.
// tests/integration/remote_e2e_test.cc does the same across two processes.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using namespace std::chrono_literals;
using testing::make_buffer;
using testing::make_host_agent;

constexpr size_t kBytes = 1 << 20;

class DescriptorExchange : public ::testing::Test {
 protected:
  void SetUp() override {
    owner_ = make_host_agent("owner");
    reader_ = make_host_agent("reader");
    ASSERT_TRUE(owner_ && reader_);
    ASSERT_TRUE(register_with_agent(blocks_, *owner_).ok());
    ASSERT_TRUE(register_with_agent(local_, *reader_).ok());
    auto port = owner_->listen("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.error().to_string();
    port_ = *port;
    where_ = "127.0.0.1:" + std::to_string(port_);
  }

  // READs what `d` names into the reader's buffer (its first d.size() bytes).
  Status read(const RemoteDescriptor& d) {
    auto local = remote_storage_of(local_)->slice(0, d.size());
    if (!local) return local.error();
    auto req = reader_->create_request(xfer::Op::Read, local->to_desc_list(), d.to_desc_list(),
                                       d.agent_name(), d.notif());
    if (!req) return req.error();
    KVBM_TRY((*req)->post());
    return (*req)->wait(10s);
  }

  std::vector<xfer::Notification> owner_notifs(size_t count) {
    std::vector<xfer::Notification> got;
    for (auto until = std::chrono::steady_clock::now() + 10s;
         got.size() < count && std::chrono::steady_clock::now() < until;) {
      for (auto& n : owner_->get_notifs()) got.push_back(std::move(n));
      if (got.size() < count) std::this_thread::sleep_for(1ms);
    }
    return got;
  }

  std::unique_ptr<xfer::Agent> owner_, reader_;
  SystemStorage blocks_ = make_buffer(kBytes, 11);
  SystemStorage local_ = make_buffer(kBytes, 0);
  uint16_t port_ = 0;
  std::string where_;
};

TEST_F(DescriptorExchange, PublishedDescriptorIsFetchedLoadedAndRead) {
  auto d = remote_descriptor_of(blocks_);
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  d->set_notif(std::string("got\0it", 6));
  ASSERT_TRUE(publish_descriptor(*owner_, "blocks/0", *d).ok());

  EXPECT_FALSE(reader_->has_remote("owner"));
  auto got = fetch_descriptor(*reader_, "127.0.0.1", port_, "blocks/0");
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, *d) << "storage, agent and notification survive the trip";
  EXPECT_TRUE(reader_->has_remote("owner")) << "the owner's metadata came with it";

  ASSERT_TRUE(read(*got).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local_.data(), kBytes, 11), SIZE_MAX);
  auto notifs = owner_notifs(1);
  ASSERT_EQ(notifs.size(), 1u);
  EXPECT_EQ(notifs[0], (xfer::Notification{"reader", std::string("got\0it", 6)}));
}

TEST_F(DescriptorExchange, MetadataIsLoadedOnlyWhenUnknownUnlessReloadIsAsked) {
  auto d = remote_descriptor_of(blocks_);
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(publish_descriptor(*owner_, "whole", *d).ok());
  ASSERT_TRUE(fetch_descriptor(*reader_, "127.0.0.1", port_, "whole").ok());
  auto prepared = reader_->create_request(xfer::Op::Read, remote_storage_of(local_)->to_desc_list(),
                                          d->to_desc_list(), "owner");
  ASSERT_TRUE(prepared.ok()) << prepared.error().to_string();

  // The owner registers more memory after the reader loaded its metadata.
  auto more = make_buffer(4096, 12);
  ASSERT_TRUE(register_with_agent(more, *owner_).ok());
  auto more_d = remote_descriptor_of(more);
  ASSERT_TRUE(more_d.ok());
  ASSERT_TRUE(publish_descriptor(*owner_, "more", *more_d).ok());

  // Known already: not reloaded, so a prepared request stays valid but the new region
  // is not in the reader's view yet.
  auto stale = fetch_descriptor(*reader_, "127.0.0.1", port_, "more");
  ASSERT_TRUE(stale.ok()) << stale.error().to_string();
  ASSERT_TRUE((*prepared)->post().ok());
  ASSERT_TRUE((*prepared)->wait(10s).ok());
  EXPECT_ERROR(read(*stale), ErrorCode::OutOfBounds, "not inside memory agent 'owner'");

  // Reload: the new region is readable; requests prepared before are not.
  auto fresh = fetch_descriptor(*reader_, "127.0.0.1", port_, "more", 5s, OwnerMetadata::Reload);
  ASSERT_TRUE(fresh.ok()) << fresh.error().to_string();
  ASSERT_TRUE(read(*fresh).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local_.data(), 4096, 12), SIZE_MAX);
  EXPECT_ERROR((*prepared)->post(), ErrorCode::Remote, "replaced by newer metadata");
}

TEST_F(DescriptorExchange, PublishRejectsADescriptorOfAnotherAgent) {
  RemoteDescriptor other(*remote_storage_of(blocks_), "someone-else");
  EXPECT_ERROR(publish_descriptor(*owner_, "k", other), ErrorCode::InvalidArgument,
               "descriptor for key 'k' names agent 'someone-else', not the publishing agent "
               "'owner'");
  EXPECT_ERROR(owner_->unpublish("k"), ErrorCode::NotFound, "'k'");  // nothing was published
  // The agent's own checks come through.
  auto d = remote_descriptor_of(blocks_);
  ASSERT_TRUE(d.ok());
  EXPECT_ERROR(publish_descriptor(*owner_, "", *d), ErrorCode::InvalidArgument, "empty");
  EXPECT_ERROR(publish_descriptor(*owner_, std::string(257, 'k'), *d), ErrorCode::InvalidArgument,
               "257");
}

TEST_F(DescriptorExchange, GarbageItemIsInvalidArgumentFromTheDecoder) {
  ASSERT_TRUE(owner_->publish("junk", "definitely not CBOR").ok());
  auto got = fetch_descriptor(*reader_, "127.0.0.1", port_, "junk");
  EXPECT_ERROR(got, ErrorCode::InvalidArgument,
               "item 'junk' from " + where_ + " is not a remote descriptor: ");
  ASSERT_TRUE(owner_->publish("json", remote_descriptor_of(blocks_)->to_json()).ok());
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, "json"), ErrorCode::InvalidArgument,
               "not a remote descriptor");
  ASSERT_TRUE(owner_->publish("empty", "").ok());
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, "empty"), ErrorCode::InvalidArgument,
               "not a remote descriptor");
  EXPECT_FALSE(reader_->has_remote("owner")) << "nothing is loaded for a bad item";
}

TEST_F(DescriptorExchange, UnknownKeyIsARemoteErrorNamingIt) {
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, "blocks/9"), ErrorCode::Remote,
               "no item 'blocks/9' published by agent 'owner'");
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, ""), ErrorCode::InvalidArgument,
               "empty");
}

TEST_F(DescriptorExchange, DescriptorNamingAnotherAgentThanTheListener) {
  // Raw bytes get past publish_descriptor's check; the reader catches the mismatch.
  RemoteDescriptor other(*remote_storage_of(blocks_), "nobody");
  ASSERT_TRUE(owner_->publish("other", other.to_bytes()).ok());
  EXPECT_ERROR(
      fetch_descriptor(*reader_, "127.0.0.1", port_, "other"), ErrorCode::InvalidArgument,
      "descriptor 'other' names agent 'nobody', but the agent at " + where_ + " is 'owner'");
}

TEST_F(DescriptorExchange, DescriptorOfTheReadersOwnMemoryNeedsNoMetadata) {
  auto mine = make_buffer(4096, 13);
  ASSERT_TRUE(register_with_agent(mine, *reader_).ok());
  ASSERT_TRUE(owner_->publish("yours", remote_descriptor_of(mine)->to_bytes()).ok());
  auto got = fetch_descriptor(*reader_, "127.0.0.1", port_, "yours");
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(got->agent_name(), "reader");
  EXPECT_FALSE(reader_->has_remote("owner"));
  ASSERT_TRUE(read(*got).ok());  // a local copy through the agent
  EXPECT_EQ(testing::find_pattern_mismatch(local_.data(), 4096, 13), SIZE_MAX);
}

TEST_F(DescriptorExchange, NetworkErrors) {
  ASSERT_TRUE(publish_descriptor(*owner_, "k", *remote_descriptor_of(blocks_)).ok());
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, "k", 0ms), ErrorCode::InvalidArgument,
               "timeout 0 ms");
  ASSERT_TRUE(deregister_from_agent(blocks_).ok());  // before its agent goes
  owner_.reset();                                    // and the listener with it
  EXPECT_ERROR(fetch_descriptor(*reader_, "127.0.0.1", port_, "k", 2s), ErrorCode::Io, where_);
}

}  // namespace
}  // namespace kvbm
