// One agent (or two in one process): construction, registration, validation of every
// request argument, metadata errors, loopback transfers, notifications, lifecycles.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "kvbm/xfer/mem_type.h"
#include "support/agents.h"
#include "support/test_support.h"
#include "xfer/backends/ucx/same_host.h"
#include "xfer/backends/ucx/worker_address.h"
#include "xfer/metadata.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using testing::dram;
using testing::make_buffer;
using testing::make_host_agent;

TEST(AgentCreate, RejectsBadArguments) {
  EXPECT_ERROR(Agent::create(""), ErrorCode::InvalidArgument, "name");
  EXPECT_ERROR(Agent::create(std::string(300, 'x')), ErrorCode::InvalidArgument, "300");
  AgentConfig bad_backend;
  bad_backend.backends = {"FOO"};
  EXPECT_ERROR(Agent::create("a", bad_backend), ErrorCode::NotFound, "'FOO'");
  AgentConfig bad_timeout;
  bad_timeout.peer_timeout = 0ms;
  EXPECT_ERROR(Agent::create("a", bad_timeout), ErrorCode::InvalidArgument, "peer_timeout");
}

TEST(AgentCreate, BackendsExplicitlyOrFromConfig) {
  auto d = make_host_agent("defaults");
  EXPECT_EQ(d->backends(), (std::vector<std::string>{"UCX", "POSIX"}));
  AgentConfig none;
  none.backends = {};
  auto a = make_host_agent("a", none);
  EXPECT_TRUE(a->backends().empty());
  EXPECT_ERROR(a->register_memory(dram(0x1000, 16)), ErrorCode::Unsupported, "no backend");
  ASSERT_TRUE(a->create_backend("UCX").ok());
  EXPECT_EQ(a->backends(), std::vector<std::string>{"UCX"});
  EXPECT_ERROR(a->create_backend("UCX"), ErrorCode::AlreadyRegistered, "UCX");
  EXPECT_ERROR(a->create_backend("NOPE"), ErrorCode::NotFound, "NOPE");
  auto b = make_host_agent("b", none);
  EXPECT_ERROR(b->create_backend("UCX", {{"bogus", "1"}}), ErrorCode::InvalidArgument,
               "UCX backend has no parameter 'bogus' (known: same_host, file_staging_mib, "
               "copy_threads, rma)");
  EXPECT_ERROR(b->create_backend("UCX", {{"same_host", "fast"}}), ErrorCode::InvalidArgument,
               "'fast'");
  EXPECT_ERROR(b->create_backend("UCX", {{"file_staging_mib", "0"}}), ErrorCode::InvalidArgument,
               "UCX file_staging_mib 0 must be in 1..65536");
  EXPECT_ERROR(b->create_backend("UCX", {{"file_staging_mib", "1M"}}), ErrorCode::InvalidArgument,
               "UCX file_staging_mib '1M' is not a number");
  setenv("KVBM_UCX_FILE_STAGING_MIB", "70000", 1);  // the parameter's default from the environment
  EXPECT_ERROR(b->create_backend("UCX"), ErrorCode::InvalidArgument, "file_staging_mib 70000");
  unsetenv("KVBM_UCX_FILE_STAGING_MIB");
  EXPECT_ERROR(b->create_backend("UCX", {{"copy_threads", "65"}}), ErrorCode::InvalidArgument,
               "UCX copy_threads 65 must be in 0..64");
  setenv("KVBM_UCX_COPY_THREADS", "-1", 1);
  EXPECT_ERROR(b->create_backend("UCX"), ErrorCode::InvalidArgument, "copy_threads '-1'");
  unsetenv("KVBM_UCX_COPY_THREADS");
  EXPECT_TRUE(b->create_backend("UCX", {{"file_staging_mib", "1"}, {"same_host", "off"}}).ok());
}

TEST(AgentRegister, ValidatesRegions) {
  auto a = make_host_agent("a");
  auto buf = make_buffer(1 << 16, 1);
  EXPECT_ERROR(a->register_memory(DescList(MemType::Dram)), ErrorCode::InvalidArgument,
               "no regions");
  EXPECT_ERROR(a->register_memory(dram(buf.addr(), 0)), ErrorCode::InvalidArgument, "length 0");
  EXPECT_ERROR(a->register_memory(dram(UINT64_MAX - 4, 16)), ErrorCode::InvalidArgument,
               "overflows");
  EXPECT_ERROR(a->register_memory(DescList(MemType::Unknown, {{buf.addr(), 16, 0}})),
               ErrorCode::InvalidArgument, "UNKNOWN");
  EXPECT_ERROR(a->register_memory(DescList(MemType::Vram, {{buf.addr(), 16, 0}})),
               ErrorCode::Unsupported, "VRAM");
  EXPECT_ERROR(a->register_memory(dram(buf.addr(), 16), "GDS"), ErrorCode::NotFound, "'GDS'");

  auto reg = a->register_memory(dram(buf.addr(), 4096));
  ASSERT_TRUE(reg.ok()) << reg.error().to_string();
  EXPECT_EQ((*reg)->agent_name(), "a");
  EXPECT_EQ((*reg)->regions(), dram(buf.addr(), 4096));
  EXPECT_ERROR(a->register_memory(dram(buf.addr() + 100, 16)), ErrorCode::InvalidArgument,
               "overlaps");
  EXPECT_ERROR(a->register_memory(dram(buf.addr() - 8, 16)), ErrorCode::InvalidArgument,
               "overlaps");
  DescList twice(MemType::Dram, {{buf.addr() + 8192, 100, 0}, {buf.addr() + 8192 + 50, 100, 0}});
  EXPECT_ERROR(a->register_memory(twice), ErrorCode::InvalidArgument, "overlaps");
  // Released registrations free the range again.
  (*reg).reset();
  EXPECT_TRUE(a->register_memory(dram(buf.addr() + 100, 16)).ok());
}

TEST(AgentRegister, StorageOwnsItsRegistration) {
  auto a = make_host_agent("a");
  auto buf = make_buffer(1 << 16, 1);
  ASSERT_TRUE(a->register_storage(buf).ok());
  EXPECT_TRUE(buf.is_registered(Agent::kRegistrationKey));
  auto* handle =
      dynamic_cast<MemoryRegistration*>(buf.registration_handle(Agent::kRegistrationKey));
  ASSERT_NE(handle, nullptr);
  EXPECT_EQ(handle->agent_name(), "a");
  EXPECT_ERROR(a->register_storage(buf), ErrorCode::AlreadyRegistered, "already registered");
  NullStorage null(64);
  EXPECT_ERROR(a->register_storage(null), ErrorCode::InvalidArgument, "Null");

  auto other = make_buffer(4096, 2);
  DescList self_target = dram(buf.addr(), 4096);
  ASSERT_TRUE(a->register_storage(other).ok());
  // Deregistering through the storage removes the region from the agent.
  ASSERT_TRUE(buf.deregister(Agent::kRegistrationKey).ok());
  EXPECT_ERROR(a->create_request(Op::Write, dram(other.addr(), 4096), self_target, "a"),
               ErrorCode::OutOfBounds, "remote descriptor 0");
}

// The agent released the regions when it went: releasing afterwards is no error.
TEST(AgentRegister, RegistrationOutlivingAgentReleasesCleanly) {
  auto buf = make_buffer(4096, 1);
  auto a = make_host_agent("a");
  auto reg = a->register_memory(dram(buf.addr(), 4096));
  ASSERT_TRUE(reg.ok());
  a.reset();
  EXPECT_TRUE((*reg)->release().ok());
  EXPECT_TRUE((*reg)->release().ok());
}

class LoopbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    agent = make_host_agent("self");
    ASSERT_TRUE(agent->register_storage(src).ok());
    ASSERT_TRUE(agent->register_storage(dst).ok());
  }
  std::unique_ptr<Agent> agent;
  SystemStorage src = make_buffer(1 << 20, 3);
  SystemStorage dst = make_buffer(1 << 20, 4);
};

TEST_F(LoopbackTest, WriteAndReadWithinOneAgent) {
  DescList local(MemType::Dram, {{src.addr() + 1, 1000, 0}, {src.addr() + 5000, 70000, 0}});
  DescList remote(MemType::Dram, {{dst.addr() + 77, 1000, 0}, {dst.addr() + 200000, 70000, 0}});
  auto req = agent->create_request(Op::Write, local, remote, "self");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  EXPECT_EQ((*req)->state(), XferState::Idle);
  ASSERT_TRUE((*req)->post().ok());
  auto w = (*req)->wait(5s);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  auto* d = static_cast<const char*>(dst.data());
  EXPECT_EQ(testing::find_pattern_mismatch(d + 77, 1000, 3, 1), SIZE_MAX);
  EXPECT_EQ(testing::find_pattern_mismatch(d + 200000, 70000, 3, 5000), SIZE_MAX);

  // READ pulls the other way: fetch dst's bytes (pattern 4) into src.
  auto rd = agent->create_request(Op::Read, dram(src.addr(), 4096), dram(dst.addr() + 500000, 4096),
                                  "self");
  ASSERT_TRUE(rd.ok());
  ASSERT_TRUE((*rd)->post().ok());
  ASSERT_TRUE((*rd)->wait(5s).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(src.data(), 4096, 4, 500000), SIZE_MAX);
}

TEST_F(LoopbackTest, RequestLifecycle) {
  auto req =
      agent->create_request(Op::Write, dram(src.addr(), 4096), dram(dst.addr(), 4096), "self");
  ASSERT_TRUE(req.ok());
  EXPECT_ERROR((*req)->wait(10ms), ErrorCode::InvalidArgument, "never posted");
  for (uint64_t seed : {10, 11, 12}) {  // a completed request can be posted again
    testing::fill_pattern(src.data(), 4096, seed);
    ASSERT_TRUE((*req)->post().ok());
    ASSERT_TRUE((*req)->wait(5s).ok());
    EXPECT_EQ((*req)->state(), XferState::Done);
    EXPECT_EQ(testing::find_pattern_mismatch(dst.data(), 4096, seed), SIZE_MAX);
  }
}

TEST_F(LoopbackTest, EveryValidationError) {
  const DescList l = dram(src.addr(), 4096), r = dram(dst.addr(), 4096);
  EXPECT_ERROR(
      agent->create_request(Op::Write, DescList(MemType::Dram), DescList(MemType::Dram), "self"),
      ErrorCode::InvalidArgument, "at least one");
  DescList two(MemType::Dram, {{src.addr(), 16, 0}, {src.addr() + 16, 16, 0}});
  EXPECT_ERROR(agent->create_request(Op::Write, two, r, "self"), ErrorCode::InvalidArgument,
               "2 local vs 1 remote");
  EXPECT_ERROR(
      agent->create_request(Op::Write, dram(src.addr(), 100), dram(dst.addr(), 200), "self"),
      ErrorCode::InvalidArgument, "local length 100 != remote length 200");
  EXPECT_ERROR(agent->create_request(Op::Write, dram(src.addr(), 0), dram(dst.addr(), 0), "self"),
               ErrorCode::InvalidArgument, "length 0");
  EXPECT_ERROR(agent->create_request(Op::Write, dram(src.addr() + (1 << 20) - 8, 16),
                                     dram(dst.addr(), 16), "self"),
               ErrorCode::OutOfBounds, "local descriptor 0");
  EXPECT_ERROR(agent->create_request(Op::Write, dram(0x10, 16), dram(dst.addr(), 16), "self"),
               ErrorCode::OutOfBounds, "local descriptor 0");
  EXPECT_ERROR(agent->create_request(Op::Write, l, dram(dst.addr() + (1 << 20) - 8, 4096), "self"),
               ErrorCode::OutOfBounds, "remote descriptor 0");
  EXPECT_ERROR(
      agent->create_request(Op::Write, l, DescList(MemType::Vram, {{dst.addr(), 4096, 0}}), "self"),
      ErrorCode::OutOfBounds, "VRAM");
  EXPECT_ERROR(agent->create_request(Op::Write, l, r, "stranger"), ErrorCode::NotFound,
               "'stranger'");
  EXPECT_ERROR(agent->create_request(Op::Write, l, r, "self", std::string((1 << 20) + 1, 'n')),
               ErrorCode::InvalidArgument, "notification");
}

TEST(AgentMetadata, GarbageOwnAndOversized) {
  auto a = make_host_agent("a");
  EXPECT_ERROR(a->load_remote_metadata("definitely not metadata"), ErrorCode::InvalidArgument, "");
  EXPECT_ERROR(a->load_remote_metadata(""), ErrorCode::InvalidArgument, "");
  auto own = a->local_metadata();
  ASSERT_TRUE(own.ok());
  EXPECT_ERROR(a->load_remote_metadata(*own), ErrorCode::InvalidArgument, "own");

  AgentConfig tiny;
  tiny.max_metadata_bytes = 16;
  auto b = make_host_agent("b", tiny);
  EXPECT_ERROR(b->load_remote_metadata(*own), ErrorCode::InvalidArgument, "");
  for (size_t cut = 0; cut < own->size(); cut += 7) {  // every truncation fails cleanly
    auto r = b->load_remote_metadata(std::string_view(*own).substr(0, cut));
    EXPECT_FALSE(r.ok());
  }
}

// The UCX parts of a peer's metadata are checked before UCX sees them: its transport
// line and UCX version, its worker address, and each packed remote key. Each corruption
// is refused with an error naming the peer; the intact metadata still loads.
TEST(AgentMetadata, UcxPartsAreCheckedBeforeUcxSeesThem) {
  auto a = make_host_agent("a", AgentConfig{.backends = {"UCX"}});
  auto b = make_host_agent("b", AgentConfig{.backends = {"UCX"}});
  auto buf = make_buffer(4096, 1);
  ASSERT_TRUE(b->register_storage(buf).ok());
  auto bytes = b->local_metadata();
  ASSERT_TRUE(bytes.ok());
  auto md = detail::decode_metadata(*bytes, 1 << 20);
  ASSERT_TRUE(md.ok()) << md.error().to_string();
  const std::string conn = md->backends.at("UCX");
  const size_t tl = conn.find('\n'), nl = conn.find('\n', tl + 1);
  ASSERT_EQ(conn.substr(0, 15), "kvbm-ucx 2 ucx ");
  auto with_conn = [&](std::string c) {
    auto m = *md;
    m.backends["UCX"] = std::move(c);
    return a->load_remote_metadata(detail::encode_metadata(m));
  };
  EXPECT_ERROR(with_conn("kvbm-ucx 2 ucx 1.99.0" + conn.substr(tl)), ErrorCode::Unsupported,
               "agent 'b' runs UCX 1.99.0");
  // A peer from before RMA over active messages (format 1), and one from a later format.
  EXPECT_ERROR(with_conn("kvbm-ucx 1 ucx 1.13.1" + conn.substr(tl)), ErrorCode::InvalidArgument,
               "another format");
  EXPECT_ERROR(with_conn("kvbm-ucx 3 ucx 1.13.1" + conn.substr(tl)), ErrorCode::InvalidArgument,
               "another format");
  EXPECT_ERROR(with_conn(conn.substr(tl + 1)), ErrorCode::InvalidArgument, "transport line");
  std::string header = conn;
  header[nl + 1] = static_cast<char>(header[nl + 1] ^ 0x0f);
  EXPECT_ERROR(with_conn(header), ErrorCode::InvalidArgument, "worker address with header");
  EXPECT_ERROR(with_conn(conn.substr(0, nl + 9)), ErrorCode::InvalidArgument,
               "worker address of 8 bytes");

  auto with_key = [&](const std::function<void(std::string&)>& mutate) {
    auto m = *md;
    auto info = detail::decode_region_info(m.regions.at(0).remote_info.at("UCX"));
    EXPECT_TRUE(info.ok());
    mutate(info->rkey);
    m.regions.at(0).remote_info["UCX"] = detail::encode_region_info(*info);
    return a->load_remote_metadata(detail::encode_metadata(m));
  };
  EXPECT_ERROR(with_key([](std::string& k) { k[7] = '\x80'; }), ErrorCode::InvalidArgument,
               "agent 'b' region 0");
  EXPECT_ERROR(with_key([](std::string& k) { k[8] = 3; }), ErrorCode::InvalidArgument,
               "memory type 3");
  EXPECT_ERROR(with_key([](std::string& k) { k += '\0'; }), ErrorCode::InvalidArgument,
               "after its last memory domain");
  EXPECT_ERROR(with_key([](std::string& k) { k.pop_back(); }), ErrorCode::InvalidArgument,
               "UCX remote key");
  EXPECT_ERROR(with_key([](std::string& k) { k.resize(4); }), ErrorCode::InvalidArgument,
               "UCX remote key of 4 bytes");
  EXPECT_EQ(a->load_remote_metadata(*bytes).value_or(""), "b");
}

// A peer's worker address is walked whole before UCX sees it: sizes UCX never writes for a
// transport are refused, and whether the peer is on this machine is read from the address
// (its shared-memory devices), so a garbled boot-id line cannot make UCX open a
// shared-memory endpoint with peer error handling (which crashed UCX 1.13).
TEST(AgentMetadata, UcxWorkerAddressIsWalkedBeforeUcxSeesIt) {
  auto a = make_host_agent("a", AgentConfig{.backends = {"UCX"}});
  auto b = make_host_agent("b", AgentConfig{.backends = {"UCX"}});
  auto abuf = make_buffer(4096, 1), bbuf = make_buffer(4096, 2);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  auto bytes = b->local_metadata();
  ASSERT_TRUE(bytes.ok());
  auto md = detail::decode_metadata(*bytes, 1 << 20);
  ASSERT_TRUE(md.ok()) << md.error().to_string();
  const std::string conn = md->backends.at("UCX");
  const size_t tl = conn.find('\n'), nl = conn.find('\n', tl + 1);
  const std::string address = conn.substr(nl + 1);
  auto walked = xfer::detail::parse_worker_address(address);
  ASSERT_TRUE(walked.ok()) << walked.error().to_string();
  auto with_conn = [&](std::string c) {
    auto m = *md;
    m.backends["UCX"] = std::move(c);
    return a->load_remote_metadata(detail::encode_metadata(m));
  };
  auto with_address = [&](const std::function<void(std::string&)>& mutate) {
    std::string changed = address;
    mutate(changed);
    return with_conn(conn.substr(0, nl + 1) + changed);
  };
  for (size_t cut = 16; cut < address.size(); cut += 5) {  // every length stays inside
    EXPECT_ERROR(with_address([&](std::string& s) { s.resize(cut); }), ErrorCode::InvalidArgument,
                 "agent 'b' sent a malformed UCX worker address");
  }
  EXPECT_ERROR(with_address([](std::string& s) { s += '\0'; }), ErrorCode::InvalidArgument,
               "bytes after the last device");
  for (const auto& e : walked->entries) {
    const size_t at = static_cast<size_t>(e.device.data() - address.data());
    // A TCP device of an address family of no such size.
    if (e.tl_checksum == xfer::detail::transport_checksum("tcp")) {
      EXPECT_ERROR(with_address([&](std::string& s) { s[at + 1] = 99; }),
                   ErrorCode::InvalidArgument, "device address of");
    }
    // A POSIX FIFO to be opened in a way this UCX never writes (UCX asserted).
    if (e.tl_checksum == xfer::detail::transport_checksum("posix")) {
      const size_t iface = static_cast<size_t>(e.interface.data() - address.data());
      EXPECT_ERROR(with_address([&](std::string& s) { s[iface + 7] ^= char(0xc0); }),
                   ErrorCode::InvalidArgument, "POSIX shared-memory segment");
    }
  }
  // The boot-id line garbled: the address still says "this machine", so the peer loads and
  // a transfer over UCX's shared memory (or whatever UCX_TLS allows) works.
  std::string garbled = conn;
  garbled.replace(tl + 1, 8, "00000000");
  auto name = with_conn(garbled);
  ASSERT_TRUE(name.ok()) << name.error().to_string();
  auto req = a->create_request(Op::Read, dram(abuf.addr(), 4096), dram(bbuf.addr(), 4096), "b");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  ASSERT_TRUE((*req)->wait(10s).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(abuf.data(), 4096, 2), SIZE_MAX);
}

TEST(AgentMetadata, TwoAgentsInOneProcess) {
  auto a = make_host_agent("a"), b = make_host_agent("b");
  auto abuf = make_buffer(1 << 20, 5), bbuf = make_buffer(1 << 20, 6);
  ASSERT_TRUE(a->register_storage(abuf).ok());
  ASSERT_TRUE(b->register_storage(bbuf).ok());
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.error().to_string();
  EXPECT_ERROR(b->listen("127.0.0.1", 0), ErrorCode::InvalidArgument, "already listens");
  auto name = a->fetch_remote_metadata("127.0.0.1", *port);
  ASSERT_TRUE(name.ok()) << name.error().to_string();
  EXPECT_EQ(*name, "b");
  EXPECT_TRUE(a->has_remote("b"));

  auto req = a->create_request(Op::Read, dram(abuf.addr(), 1 << 20), dram(bbuf.addr(), 1 << 20),
                               "b", "got-it");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  ASSERT_TRUE((*req)->wait(5s).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(abuf.data(), 1 << 20, 6), SIZE_MAX);
  std::vector<Notification> got;
  for (int i = 0; i < 500 && got.empty(); ++i) {
    got = b->get_notifs();
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(got, (std::vector<Notification>{{"a", "got-it"}}));

  // Invalidation: the prepared request fails to post, new ones cannot be made.
  ASSERT_TRUE(a->invalidate_remote("b").ok());
  EXPECT_FALSE(a->has_remote("b"));
  EXPECT_ERROR((*req)->post(), ErrorCode::Remote, "invalidated");
  EXPECT_ERROR(a->create_request(Op::Read, dram(abuf.addr(), 16), dram(bbuf.addr(), 16), "b"),
               ErrorCode::NotFound, "'b'");
  EXPECT_ERROR(a->invalidate_remote("b"), ErrorCode::NotFound, "'b'");
  EXPECT_ERROR(a->gen_notif("b", "x"), ErrorCode::NotFound, "'b'");
}

TEST(AgentSideChannel, FetchErrors) {
  auto a = make_host_agent("a");
  auto b = make_host_agent("b");
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  b.reset();  // listener gone with its agent
  EXPECT_ERROR(a->fetch_remote_metadata("127.0.0.1", *port, 2s), ErrorCode::Io, "");
  EXPECT_ERROR(a->listen("256.1.1.1", 0), ErrorCode::InvalidArgument, "256.1.1.1");
}

TEST(AgentPublish, PublishFetchReplaceUnpublish) {
  auto a = make_host_agent("a"), b = make_host_agent("b");
  ASSERT_TRUE(b->publish("early", "published before listen").ok());
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.error().to_string();
  auto early = a->fetch_published("127.0.0.1", *port, "early");
  ASSERT_TRUE(early.ok()) << early.error().to_string();
  EXPECT_EQ(*early, "published before listen");
  EXPECT_FALSE(a->has_remote("b")) << "fetching an item loads no metadata";

  const std::string v1("v1\0\xff", 4);
  ASSERT_TRUE(b->publish("k", v1).ok());
  EXPECT_EQ(a->fetch_published("127.0.0.1", *port, "k").value(), v1) << "bytes are exact";
  ASSERT_TRUE(b->publish("k", "v2").ok());  // replaces
  EXPECT_EQ(a->fetch_published("127.0.0.1", *port, "k").value(), "v2");
  ASSERT_TRUE(b->publish("empty", "").ok());
  EXPECT_EQ(a->fetch_published("127.0.0.1", *port, "empty").value(), "");
  const std::string longest(Agent::kMaxPublishedKeyBytes, 'L');
  ASSERT_TRUE(b->publish(longest, "long").ok());
  EXPECT_EQ(a->fetch_published("127.0.0.1", *port, longest).value(), "long");
  // The same listener still serves the metadata; an agent can read its own items.
  EXPECT_EQ(a->fetch_remote_metadata("127.0.0.1", *port).value(), "b");
  EXPECT_EQ(b->fetch_published("127.0.0.1", *port, "k").value(), "v2");

  ASSERT_TRUE(b->unpublish("k").ok());
  EXPECT_ERROR(a->fetch_published("127.0.0.1", *port, "k"), ErrorCode::Remote,
               "no item 'k' published by agent 'b'");
  EXPECT_ERROR(b->unpublish("k"), ErrorCode::NotFound, "no item 'k' published by agent 'b'");
  EXPECT_EQ(a->fetch_published("127.0.0.1", *port, "early").value(), "published before listen");
}

TEST(AgentPublish, RejectsBadKeysAndSizes) {
  AgentConfig small;
  small.max_metadata_bytes = 1024;
  auto a = make_host_agent("a", small);
  EXPECT_ERROR(a->publish("", "x"), ErrorCode::InvalidArgument, "must not be empty");
  EXPECT_ERROR(a->publish(std::string(257, 'k'), "x"), ErrorCode::InvalidArgument,
               "item key of 257 bytes exceeds 256");
  EXPECT_ERROR(a->publish("big", std::string(1025, 'x')), ErrorCode::InvalidArgument,
               "item 'big' of 1025 bytes exceeds max_metadata_bytes 1024");
  EXPECT_TRUE(a->publish("fits", std::string(1024, 'x')).ok());
  EXPECT_ERROR(a->unpublish("never"), ErrorCode::NotFound,
               "no item 'never' published by agent 'a'");
  // Checked before any connection is tried (nobody listens on port 1).
  EXPECT_ERROR(a->fetch_published("127.0.0.1", 1, ""), ErrorCode::InvalidArgument,
               "must not be empty");
  EXPECT_ERROR(a->fetch_published("127.0.0.1", 1, std::string(300, 'k')),
               ErrorCode::InvalidArgument, "item key of 300 bytes exceeds 256");

  // The reader's limit applies to what it fetches.
  auto b = make_host_agent("b");
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  ASSERT_TRUE(b->publish("big", std::string(2048, 'x')).ok());
  EXPECT_ERROR(a->fetch_published("127.0.0.1", *port, "big"), ErrorCode::InvalidArgument,
               "declared length 2048 exceeds max_bytes 1024");
}

TEST(AgentPublish, FetchErrors) {
  auto a = make_host_agent("a");
  auto b = make_host_agent("b");
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  ASSERT_TRUE(b->publish("k", "v").ok());
  EXPECT_ERROR(a->fetch_published("127.0.0.1", *port, "k", 0ms), ErrorCode::InvalidArgument,
               "timeout 0 ms");
  EXPECT_ERROR(a->fetch_published("300.1.2.3", *port, "k"), ErrorCode::InvalidArgument,
               "300.1.2.3");
  b.reset();  // the listener, and the items, go with the agent
  EXPECT_ERROR(a->fetch_published("127.0.0.1", *port, "k", 2s), ErrorCode::Io,
               "127.0.0.1:" + std::to_string(*port));
}

TEST(AgentPublish, ConcurrentPublishersAndFetchers) {
  auto a = make_host_agent("a"), b = make_host_agent("b");
  auto port = b->listen("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      const std::string key = "key" + std::to_string(t);
      for (int i = 0; !stop; ++i) {
        if (i % 3 == 2) {
          (void)b->unpublish(key);  // NotFound when the last round unpublished it too
        } else if (!b->publish(key, key + "=" + std::to_string(i)).ok()) {
          ++bad;
        }
        std::this_thread::sleep_for(50us);
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      const std::string key = "key" + std::to_string(t);
      for (int i = 0; i < 40; ++i) {
        auto got = a->fetch_published("127.0.0.1", *port, key);
        // Either a whole value for that key, or "not published (at that moment)".
        if (got ? got->rfind(key + "=", 0) != 0 : got.code() != ErrorCode::Remote) ++bad;
      }
    });
  }
  threads[2].join();
  threads[3].join();
  stop = true;
  threads[0].join();
  threads[1].join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace kvbm::xfer
