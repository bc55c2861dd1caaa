// Partial metadata between two agents in one process (Agent::local_partial_metadata and
// load_remote_metadata's merge): one more region travels alone and joins what the peer
// loaded, without replacing it (requests prepared before keep working); regions alone of a
// peer not loaded, or of another incarnation of it, are refused naming the agent.
#include <gtest/gtest.h>

#include <vector>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/agents.h"
#include "support/test_support.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::dram;
using testing::make_buffer;
using testing::make_host_agent;

Status read(Agent& agent, const SystemStorage& into, uint64_t from, size_t len,
            const std::string& peer) {
  auto req = agent.create_request(Op::Read, dram(into.addr(), len), dram(from, len), peer);
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(10s);
}

TEST(PartialMetadata, OneMoreRegionTravelsAloneAndJoinsTheLoadedPeer) {
  auto a = make_host_agent("a"), b = make_host_agent("b");
  auto local = make_buffer(64 << 10, 0);
  ASSERT_TRUE(b->register_storage(local).ok());
  std::vector<SystemStorage> bufs;
  for (uint64_t i = 0; i < 32; ++i) {
    bufs.push_back(make_buffer(4096, 100 + i));
    ASSERT_TRUE(a->register_storage(bufs.back()).ok());
  }
  auto full = a->local_metadata();
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(b->load_remote_metadata(*full).ok());
  auto prepared =
      b->create_request(Op::Read, dram(local.addr(), 4096), dram(bufs[0].addr(), 4096), "a");
  ASSERT_TRUE(prepared.ok()) << prepared.error().to_string();

  auto more = make_buffer(8192, 7);
  ASSERT_TRUE(a->register_storage(more).ok());
  // Any descriptor inside the new region names it; no connection data.
  auto part = a->local_partial_metadata(dram(more.addr() + 100, 10), false);
  ASSERT_TRUE(part.ok()) << part.error().to_string();
  EXPECT_LT(part->size() * 8, full->size());  // one region of 33, without connection data
  EXPECT_ERROR(read(*b, local, more.addr(), 8192, "a"), ErrorCode::OutOfBounds, "agent 'a'");
  ASSERT_EQ(b->load_remote_metadata(*part).value_or(""), "a");
  ASSERT_TRUE(read(*b, local, more.addr(), 8192, "a").ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 8192, 7), SIZE_MAX);
  // Merged, not replaced: the request prepared before still posts, and the old regions stay.
  ASSERT_TRUE((*prepared)->post().ok());
  ASSERT_TRUE((*prepared)->wait(10s).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 4096, 100), SIZE_MAX);
  ASSERT_TRUE(read(*b, local, bufs[31].addr(), 4096, "a").ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 4096, 131), SIZE_MAX);

  // With the same connection data it merges too.
  auto with_conn = a->local_partial_metadata(dram(more.addr(), 1), true);
  ASSERT_TRUE(with_conn.ok());
  ASSERT_TRUE(b->load_remote_metadata(*with_conn).ok());
  ASSERT_TRUE((*prepared)->post().ok());
  ASSERT_TRUE((*prepared)->wait(10s).ok());
}

TEST(PartialMetadata, RefusedWhereItCannotMerge) {
  auto a = make_host_agent("a"), b = make_host_agent("b");
  auto abuf = make_buffer(4096, 1), bbuf = make_buffer(4096, 2);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  EXPECT_ERROR(a->local_partial_metadata(dram(bbuf.addr(), 16), false), ErrorCode::OutOfBounds,
               "descriptor 0 (DRAM addr");
  EXPECT_ERROR(a->local_partial_metadata(DescList(MemType::Dram), false),
               ErrorCode::InvalidArgument, "would carry nothing");
  auto regions_only = a->local_partial_metadata(dram(abuf.addr(), 16), false);
  ASSERT_TRUE(regions_only.ok());
  EXPECT_ERROR(b->load_remote_metadata(*regions_only), ErrorCode::NotFound,
               "partial metadata of agent 'a' holds regions only, and the agent is not loaded");
  EXPECT_ERROR(a->load_remote_metadata(*regions_only), ErrorCode::InvalidArgument,
               "this agent's own");
  ASSERT_TRUE(b->load_remote_metadata(*a->local_metadata()).ok());
  auto prepared = b->create_request(Op::Read, dram(bbuf.addr(), 16), dram(abuf.addr(), 16), "a");
  ASSERT_TRUE(prepared.ok());

  // Agent 'a' again (a restart): its regions alone do not merge into the old one's.
  a.reset();
  auto a2 = make_host_agent("a");
  auto a2buf = make_buffer(4096, 3);
  ASSERT_TRUE(a2->register_storage(a2buf).ok());
  EXPECT_ERROR(b->load_remote_metadata(*a2->local_partial_metadata(dram(a2buf.addr(), 16), false)),
               ErrorCode::InvalidArgument, "is of incarnation");
  // With its connection data it replaces the old one, as whole metadata would.
  ASSERT_TRUE(
      b->load_remote_metadata(*a2->local_partial_metadata(dram(a2buf.addr(), 16), true)).ok());
  EXPECT_ERROR((*prepared)->post(), ErrorCode::Remote, "replaced by newer metadata");
  ASSERT_TRUE(read(*b, bbuf, a2buf.addr(), 4096, "a").ok());
  EXPECT_EQ(testing::find_pattern_mismatch(bbuf.data(), 4096, 3), SIZE_MAX);
  EXPECT_ERROR(read(*b, bbuf, abuf.addr(), 16, "a"), ErrorCode::OutOfBounds, "agent 'a'");
}

}  // namespace
}  // namespace kvbm::xfer
