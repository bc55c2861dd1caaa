// The UCX backend's RMA over active messages (xfer/backends/ucx/am_rma.h): the wire form
// of its requests and replies (bytes from the network), the rule that picks it per peer,
// and, between two agents, a target that refuses what lies outside its registered memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/test_support.h"
#include "xfer/backends/ucx/am_rma.h"
#include "xfer/backends/ucx/am_rma_wire.h"
#include "xfer/backends/ucx/worker_address.h"

namespace kvbm::xfer::detail {
namespace {

using namespace std::chrono_literals;

std::string header(const AmRmaRequest& h) {
  std::string s(kAmRmaHeaderBytes, '\0');
  encode(h, s.data());
  return s;
}

std::string header(const AmRmaReply& h) {
  std::string s(kAmRmaHeaderBytes, '\0');
  encode(h, s.data());
  return s;
}

TEST(AmRmaWire, RequestsAndRepliesRoundTrip) {
  auto w = decode_am_rma_request(header(AmRmaRequest{Op::Write, 7, 0x1000, 4096}), 4096, true);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  EXPECT_EQ(w->op, Op::Write);
  EXPECT_EQ(w->id, 7u);
  EXPECT_EQ(w->addr, 0x1000u);
  EXPECT_EQ(w->len, 4096u);
  auto r = decode_am_rma_request(header(AmRmaRequest{Op::Read, 8, 0x2000, 16}), 0, false);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->op, Op::Read);

  auto data = decode_am_rma_reply(header(AmRmaReply{AmRmaReplyKind::Data, 8, 16}), 16, false);
  ASSERT_TRUE(data.ok()) << data.error().to_string();
  EXPECT_EQ(data->kind, AmRmaReplyKind::Data);
  EXPECT_EQ(data->len, 16u);
  AmRmaReply e{AmRmaReplyKind::Error, 9};
  e.error = ErrorCode::OutOfBounds;
  auto refused = decode_am_rma_reply(header(e), 12, false);
  ASSERT_TRUE(refused.ok()) << refused.error().to_string();
  EXPECT_EQ(refused->error, ErrorCode::OutOfBounds);
  EXPECT_EQ(refused->id, 9u);
}

TEST(AmRmaWire, RefusesWhatWouldWriteMoreThanAsked) {
  const std::string write = header(AmRmaRequest{Op::Write, 1, 0x1000, 4096});
  EXPECT_ERROR(decode_am_rma_request(write, 4097, false), ErrorCode::Remote,
               "WRITE request of 4096 bytes carries 4097");
  EXPECT_ERROR(decode_am_rma_request(header(AmRmaRequest{Op::Read, 1, 0x1000, 8}), 8, false),
               ErrorCode::Remote, "READ request carries 8 bytes");
  EXPECT_ERROR(decode_am_rma_request(header(AmRmaRequest{Op::Read, 1, 0x1000, 0}), 0, false),
               ErrorCode::Remote, "of 0 bytes");
  EXPECT_ERROR(decode_am_rma_request(header(AmRmaRequest{Op::Read, 1, ~0ull - 3, 8}), 0, false),
               ErrorCode::Remote, "overflows");
  EXPECT_ERROR(decode_am_rma_request(write.substr(1), 4096, false), ErrorCode::Remote,
               "header of 31 bytes");
  std::string bad = write;
  bad[4] = 9;  // version
  EXPECT_ERROR(decode_am_rma_request(bad, 4096, false), ErrorCode::Remote, "wire version 9");
  bad = write;
  bad[6] = 2;  // op
  EXPECT_ERROR(decode_am_rma_request(bad, 4096, false), ErrorCode::Remote, "unknown op 2");
  bad = write;
  bad[0] ^= 1;
  EXPECT_ERROR(decode_am_rma_request(bad, 4096, false), ErrorCode::Remote, "bad magic");
  EXPECT_FALSE(am_rma_header_id(bad, false).has_value());
  bad = write;
  bad[6] = 2;
  EXPECT_EQ(am_rma_header_id(bad, false), 1u);  // well-formed enough to be answered

  const std::string data = header(AmRmaReply{AmRmaReplyKind::Data, 2, 64});
  EXPECT_ERROR(decode_am_rma_reply(data, 65, true), ErrorCode::Remote,
               "data reply of 64 bytes carries 65");
  EXPECT_ERROR(decode_am_rma_reply(header(AmRmaReply{AmRmaReplyKind::Ack, 2}), 1, false),
               ErrorCode::Remote, "ack carries 1 bytes");
  AmRmaReply e{AmRmaReplyKind::Error, 2};
  EXPECT_ERROR(decode_am_rma_reply(header(e), kMaxAmRmaErrorBytes + 1, false), ErrorCode::Remote,
               "error reply with 1025 bytes");
  EXPECT_ERROR(decode_am_rma_reply(header(e), 4, true), ErrorCode::Remote, "error reply");
  bad = header(e);
  bad[8] = 99;  // error code
  EXPECT_ERROR(decode_am_rma_reply(bad, 0, false), ErrorCode::Remote, "unknown error code 99");
  bad[6] = 7;  // kind
  EXPECT_ERROR(decode_am_rma_reply(bad, 0, false), ErrorCode::Remote, "unknown kind 7");
  EXPECT_EQ(am_rma_header_id(bad, true), 2u);
}

// A version 2 worker address with one device and one interface of transport `tl`.
std::string address_of(const char* tl) {
  const uint16_t sum = transport_checksum(tl);
  std::string a = {0x01, 0x02};
  a += std::string(8, 'u');                            // uuid
  a += {0x02, static_cast<char>(0x80 | 2), 'd', 'v'};  // md 2; device: last, 2 bytes
  a += {static_cast<char>(sum & 0xff), static_cast<char>(sum >> 8)};
  a += std::string(8, 'a');                 // attributes
  a += {static_cast<char>(0x80 | 1), 'i'};  // last interface, 1 byte of address
  return a;
}

TEST(AmRmaChoice, NativeOnlyWithAnRdmaTransportInCommon) {
  UcxWireShape ours;
  ours.address_walks = true;
  ours.transports = {{transport_checksum("tcp"), {}, {}}, {transport_checksum("rc_mlx5"), {}, {}}};
  EXPECT_TRUE(ucx::native_rma_reaches(address_of("rc_mlx5"), ours));
  EXPECT_FALSE(ucx::native_rma_reaches(address_of("tcp"), ours));
  EXPECT_FALSE(ucx::native_rma_reaches(address_of("rc_verbs"), ours)) << "not ours";
  EXPECT_FALSE(ucx::native_rma_reaches(address_of("ud_mlx5"), ours)) << "UD has no RMA";
  EXPECT_FALSE(ucx::native_rma_reaches(address_of("posix"), ours));
  // An address that does not walk here says nothing: ucp_put/get, as before.
  EXPECT_TRUE(ucx::native_rma_reaches("garbage", ours));
  ours.address_walks = false;
  EXPECT_TRUE(ucx::native_rma_reaches(address_of("tcp"), ours));

  EXPECT_ERROR(ucx::parse_rma_mode("fast"), ErrorCode::InvalidArgument,
               "rma = 'fast': expected auto, native or am");
  EXPECT_EQ(*ucx::parse_rma_mode("am"), ucx::RmaMode::Am);
}

// Two agents of this process over UCX alone (no same-host path) and its RMA over active
// messages. The initiator keeps the target's older metadata, which still lists a region
// the target has since deregistered: the target refuses, naming why, and the initiator's
// request fails rather than writing (or reading) memory no longer registered.
TEST(AmRma, TargetRefusesWhatIsNotRegisteredAndStaysUsable) {
  auto make = [](const std::string& name) -> std::unique_ptr<Agent> {
    AgentConfig config;
    config.backends = {};
    config.add_cuda_if_gpu = false;
    auto a = Agent::create(name, config);
    if (!a) return nullptr;
    if (!(*a)->create_backend("UCX", {{"same_host", "off"}, {"rma", "am"}})) return nullptr;
    return std::move(*a);
  };
  auto a = make("a"), b = make("b");
  ASSERT_TRUE(a && b);
  constexpr size_t kLen = 64 << 10;
  auto mine = SystemAllocator().allocate(kLen);
  auto kept = SystemAllocator().allocate(kLen);
  auto dropped = SystemAllocator().allocate(2 * kLen);
  ASSERT_TRUE(mine && kept && dropped);
  auto reg_mine = a->register_memory(DescList(MemType::Dram, {{mine->addr(), kLen, 0}}));
  auto reg_kept = b->register_memory(DescList(MemType::Dram, {{kept->addr(), kLen, 0}}));
  auto reg_dropped = b->register_memory(DescList(MemType::Dram, {{dropped->addr(), 2 * kLen, 0}}));
  ASSERT_TRUE(reg_mine && reg_kept && reg_dropped);
  auto md = b->local_metadata();
  ASSERT_TRUE(md);
  ASSERT_TRUE(a->load_remote_metadata(*md));
  reg_dropped->reset();  // b no longer serves it; a's copy of b's metadata still lists it
  std::memset(dropped->data(), 0x5a, 2 * kLen);

  const DescList local(MemType::Dram, {{mine->addr(), kLen, 0}});
  // Small (eager) and large (rendezvous where UCX picks it) alike.
  for (size_t len : {size_t{8}, kLen}) {
    SCOPED_TRACE(len);
    const DescList l(MemType::Dram, {{mine->addr(), len, 0}});
    const DescList stale(MemType::Dram, {{dropped->addr() + kLen, len, 0}});
    for (Op op : {Op::Write, Op::Read}) {
      auto req = a->create_request(op, l, stale, "b");
      ASSERT_TRUE(req) << req.error().to_string();
      ASSERT_TRUE((*req)->post());
      auto st = (*req)->wait(10s);
      EXPECT_ERROR(st, ErrorCode::OutOfBounds, "not inside memory agent 'b' has registered");
      EXPECT_NE(st.error().message.find("transfer with agent 'b' failed"), std::string::npos)
          << st.error().to_string();
    }
  }
  const auto* p = static_cast<const unsigned char*>(dropped->data());
  EXPECT_EQ(std::count(p, p + 2 * kLen, 0x5a), static_cast<long>(2 * kLen)) << "a byte landed";

  // The agents go on: a WRITE and a READ to the region b still serves.
  testing::fill_pattern(mine->data(), kLen, 3);
  const DescList remote(MemType::Dram, {{kept->addr(), kLen, 0}});
  auto w = a->create_request(Op::Write, local, remote, "b", "done");
  ASSERT_TRUE(w);
  ASSERT_TRUE((*w)->post());
  ASSERT_TRUE((*w)->wait(10s));
  b->progress();  // orders the bytes b's progress thread received before this thread's reads
  EXPECT_EQ(testing::find_pattern_mismatch(kept->data(), kLen, 3), SIZE_MAX);
  std::memset(mine->data(), 0, kLen);
  auto r = a->create_request(Op::Read, local, remote, "b");
  ASSERT_TRUE(r);
  ASSERT_TRUE((*r)->post());
  ASSERT_TRUE((*r)->wait(10s));
  EXPECT_EQ(testing::find_pattern_mismatch(mine->data(), kLen, 3), SIZE_MAX);
}

}  // namespace
}  // namespace kvbm::xfer::detail
