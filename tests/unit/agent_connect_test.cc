// Agent::connect between two agents in one process (TCP loopback; the two-host tests run it
// across a veth): a loaded peer's endpoint set up before its first request, errors naming
// the peer, and a peer's progress thread running meanwhile (thread sanitizer).
#include <gtest/gtest.h>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/test_support.h"
#include "support/two_process.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;

TEST(AgentConnect, SetsUpALoadedPeerAndNamesOneThatIsNot) {
  testing::use_transport(testing::Transport{"tcp", "tcp,self", "off"});
  AgentConfig c;
  c.add_cuda_if_gpu = false;
  auto a = Agent::create("a", c), b = Agent::create("b", c);
  ASSERT_TRUE(a.ok() && b.ok());
  auto abuf = SystemAllocator().allocate(4096), bbuf = SystemAllocator().allocate(4096);
  ASSERT_TRUE(abuf.ok() && bbuf.ok());
  testing::fill_pattern(bbuf->data(), 4096, 9);
  ASSERT_TRUE((*a)->register_storage(*abuf).ok());
  ASSERT_TRUE((*b)->register_storage(*bbuf).ok());
  EXPECT_ERROR((*a)->connect("b"), ErrorCode::NotFound, "agent 'b' is not known to 'a'");
  ASSERT_TRUE((*a)->load_remote_metadata(*(*b)->local_metadata()).ok());
  Status st = (*a)->connect("b");
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  ASSERT_TRUE((*a)->connect("b").ok());
  ASSERT_TRUE(testing::transfer(**a, Op::Read, DescList(MemType::Dram, {{abuf->addr(), 4096, 0}}),
                                DescList(MemType::Dram, {{bbuf->addr(), 4096, 0}}), "b")
                  .ok());
  EXPECT_EQ(testing::find_pattern_mismatch(abuf->data(), 4096, 9), SIZE_MAX);
  ASSERT_TRUE((*a)->invalidate_remote("b").ok());
  EXPECT_ERROR((*a)->connect("b"), ErrorCode::NotFound, "agent 'b'");
}

}  // namespace
}  // namespace kvbm::xfer
