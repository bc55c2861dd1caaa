// Remote files between two processes (this test and tests/integration/agent_peer), over
// UCX shared memory and TCP: the peer owns a file registered as FILE; this agent READs
// and WRITEs it like any remote memory, and the owner's agent serves the requests
// through a staging buffer with no help from its application.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "support/child_process.h"
#include "support/test_support.h"
#include "support/two_process.h"
#include "xfer/backends/ucx/file_wire.h"

namespace kvbm::xfer {
namespace {

using namespace std::chrono_literals;
using detail::kFileChunkBytes;
using testing::ChildProcess;
using testing::peer_timeout;
using testing::Transport;

constexpr uint64_t kFileSeed = 41;
constexpr size_t kFileBytes = 12 << 20;             // what the file holds
constexpr size_t kRegionBytes = kFileBytes + 8192;  // registered: a little past its end
constexpr size_t kLocalBytes = 16 << 20;

class RemoteFile : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    testing::use_transport(GetParam());
    auto ready = testing::start_agent_peer(owner, {"owner", "4096", "1"}, GetParam(), owner_env);
    ASSERT_TRUE(ready);
    std::istringstream(*ready) >> port >> owner_addr;
    auto file = owner->ask("file " + std::to_string(kFileBytes) + " " + std::to_string(kFileSeed) +
                           " " + std::to_string(kRegionBytes));
    ASSERT_TRUE(file && file->rfind("OK ", 0) == 0) << file.value_or("<nothing>");
    fd = std::stoull(file->substr(3));

    AgentConfig config;
    config.peer_timeout = peer_timeout();
    auto a = Agent::create("initiator", config);
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    agent = std::move(*a);
    ASSERT_TRUE(agent->register_storage(local).ok());
    auto name = agent->fetch_remote_metadata("127.0.0.1", port);
    ASSERT_TRUE(name.ok()) << name.error().to_string();
  }
  void TearDown() override {
    if (owner) owner->send("quit");
  }

  DescList local_descs(const std::vector<std::pair<size_t, size_t>>& off_len) const {
    return testing::descs_at(MemType::Dram, local.addr(), off_len);
  }
  DescList file_descs(const std::vector<std::pair<size_t, size_t>>& off_len) const {
    return testing::descs_at(MemType::File, 0, off_len, fd);
  }
  Status run(Op op, const DescList& l, const DescList& r, std::optional<std::string> notif = {}) {
    return testing::transfer(*agent, op, l, r, "owner", std::move(notif));
  }

  std::unique_ptr<Agent> agent;  // destroyed after `local`
  SystemStorage local = [] {
    auto s = SystemAllocator().allocate(kLocalBytes);
    testing::fill_pattern(s->data(), kLocalBytes, 21);
    return std::move(*s);
  }();
  std::map<std::string, std::string> owner_env;  // for the owner's process, besides UCX's
  std::unique_ptr<ChildProcess> owner;
  uint16_t port = 0;
  uint64_t owner_addr = 0;  // the owner's registered buffer: 4096 bytes of pattern 1
  uint64_t fd = 0;
};

// Sizes from 1 byte to several staging chunks, at unaligned and aligned offsets.
std::vector<std::pair<size_t, size_t>> layout(size_t shift) {
  return testing::spaced_ranges(
      {1, 7, 4096, 65537, kFileChunkBytes, kFileChunkBytes + 1, (3 * kFileChunkBytes) + 5}, shift,
      4093);
}

TEST_P(RemoteFile, ReadsBlocksOfSeveralSizesFromThePeersFile) {
  auto dst = layout(3), src = layout(4096);
  src[0].first = 0;  // the file's first byte, too
  ASSERT_TRUE(run(Op::Read, local_descs(dst), file_descs(src)).ok());
  for (size_t i = 0; i < src.size(); ++i) {
    const char* got = static_cast<const char*>(local.data()) + dst[i].first;
    EXPECT_EQ(testing::find_pattern_mismatch(got, dst[i].second, kFileSeed, src[i].first), SIZE_MAX)
        << "descriptor " << i << " of " << dst[i].second << " bytes at file offset "
        << src[i].first;
  }
}

TEST_P(RemoteFile, WritesBlocksIntoThePeersFile) {
  auto src = layout(11), dst = layout(1);
  ASSERT_TRUE(run(Op::Write, local_descs(src), file_descs(dst)).ok());
  for (size_t i = 0; i < src.size(); ++i) {
    std::ostringstream cmd;
    cmd << "checkfile " << fd << " " << dst[i].first << " " << dst[i].second << " 21 "
        << src[i].first;
    EXPECT_EQ(owner->ask(cmd.str()), "OK") << "descriptor " << i << " of " << dst[i].second;
  }
  // Bytes between the descriptors are untouched.
  EXPECT_EQ(owner->ask("checkfile " + std::to_string(fd) + " 0 1 41 0"), "OK");
}

TEST_P(RemoteFile, WriteNotificationArrivesAfterTheFileIsWritten) {
  for (uint64_t seed : {51, 52}) {
    testing::fill_pattern(local.data(), 8 << 20, seed);
    ASSERT_TRUE(owner->send("expectfile f" + std::to_string(seed) + " 20000 " + std::to_string(fd) +
                            " 4096 8388608 " + std::to_string(seed) + " 0"));
    ASSERT_TRUE(run(Op::Write, local_descs({{0, 8 << 20}}), file_descs({{4096, 8 << 20}}),
                    "f" + std::to_string(seed))
                    .ok());
    EXPECT_EQ(owner->read_line(), "OK");
  }
}

TEST_P(RemoteFile, ReadNotificationArrivesAfterTheData) {
  ASSERT_TRUE(owner->send("expect r1 20000"));
  ASSERT_TRUE(run(Op::Read, local_descs({{0, 2 << 20}}), file_descs({{0, 2 << 20}}), "r1").ok());
  EXPECT_EQ(owner->read_line(), "OK");
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 2 << 20, kFileSeed), SIZE_MAX);
}

TEST_P(RemoteFile, ReadPastEndOfFileIsAnErrorNamingTheOffset) {
  const size_t off = kFileBytes - 100;
  Status st = run(Op::Read, local_descs({{0, 4096}}), file_descs({{off, 4096}}));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), ErrorCode::Io) << st.error().to_string();
  EXPECT_NE(st.error().message.find("offset " + std::to_string(off)), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("end of file"), std::string::npos) << st.error().message;
  // The request failed cleanly: the next one works.
  ASSERT_TRUE(run(Op::Read, local_descs({{0, 4096}}), file_descs({{8192, 4096}})).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 4096, kFileSeed, 8192), SIZE_MAX);
}

TEST_P(RemoteFile, AClosedFileIsAnErrorNamingItsFdAndOffset) {
  ASSERT_EQ(owner->ask("closefd " + std::to_string(fd)), "OK");
  for (Op op : {Op::Read, Op::Write}) {
    Status st = run(op, local_descs({{0, 4096}}), file_descs({{12288, 4096}}));
    ASSERT_FALSE(st.ok()) << to_string(op);
    EXPECT_EQ(st.code(), ErrorCode::Io) << st.error().to_string();
    EXPECT_NE(st.error().message.find("fd " + std::to_string(fd)), std::string::npos)
        << st.error().message;
    EXPECT_NE(st.error().message.find("offset 12288"), std::string::npos) << st.error().message;
  }
}

TEST_P(RemoteFile, TheOwnersDeviceErrorIsAnIoErrorNamingFdAndOffset) {
  auto mem = owner->ask("procmem");  // an fd whose reads and writes fail with EIO
  ASSERT_TRUE(mem && mem->rfind("OK ", 0) == 0) << mem.value_or("<nothing>");
  const uint64_t bad = std::stoull(mem->substr(3));
  ASSERT_TRUE(agent->fetch_remote_metadata("127.0.0.1", port).ok());  // with that region
  for (Op op : {Op::Read, Op::Write}) {
    Status st =
        run(op, local_descs({{0, 8192}}), testing::descs_at(MemType::File, 0, {{4096, 8192}}, bad));
    ASSERT_FALSE(st.ok()) << to_string(op);
    EXPECT_EQ(st.code(), ErrorCode::Io) << st.error().to_string();
    EXPECT_NE(st.error().message.find("fd " + std::to_string(bad)), std::string::npos)
        << st.error().message;
    EXPECT_NE(st.error().message.find("offset 4096"), std::string::npos) << st.error().message;
    EXPECT_NE(st.error().message.find(std::strerror(EIO)), std::string::npos) << st.error().message;
  }
  // The owner goes on serving its good file.
  ASSERT_TRUE(run(Op::Read, local_descs({{0, 4096}}), file_descs({{8192, 4096}})).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), 4096, kFileSeed, 8192), SIZE_MAX);
}

TEST_P(RemoteFile, AWriteTheOwnersFileSystemRefusesIsAnErrorNamingFdAndOffset) {
  // The owner may not grow its files any more: as on a full file system, its write past
  // the file's end fails (EFBIG here), and the error reaches this agent.
  ASSERT_EQ(owner->ask("fsizelimit " + std::to_string(kFileBytes)), "OK");
  const size_t off = kFileBytes - 4096;
  Status st = run(Op::Write, local_descs({{0, 8192}}), file_descs({{off, 8192}}));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), ErrorCode::Io) << st.error().to_string();
  EXPECT_NE(st.error().message.find("fd " + std::to_string(fd)), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("offset " + std::to_string(off)), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find(std::strerror(EFBIG)), std::string::npos) << st.error().message;
  // Writes inside the limit go on.
  ASSERT_TRUE(run(Op::Write, local_descs({{0, 4096}}), file_descs({{8192, 4096}})).ok());
  EXPECT_EQ(owner->ask("checkfile " + std::to_string(fd) + " 8192 4096 21 0"), "OK");
}

// The owner's file I/O runs off its agent's lock: while a READ of its file waits for
// bytes (a FIFO here, standing for a slow disk), the owner still takes notifications in
// and serves a transfer of its memory (over TCP, UCX's emulated RMA needs the owner's
// progress). The owner does not connect back: over TCP, UCX 1.13 can fail an assertion
// on its wire-up (ucp_ep.inl:215, remote_id) when an owner that peers reach with
// reply-endpoint messages creates its own endpoint to them (seen once in CI).
TEST_P(RemoteFile, OwnerStaysResponsiveWhileItsFileIoWaits) {
  constexpr size_t kLen = 65536;  // one chunk; the FIFO's buffer holds it
  auto fifo = owner->ask("fifo " + std::to_string(kLen));
  ASSERT_TRUE(fifo && fifo->rfind("OK ", 0) == 0) << fifo.value_or("<nothing>");
  uint64_t fifo_fd = 0;
  std::string path;
  std::istringstream(fifo->substr(3)) >> fifo_fd >> path;
  const int w = open(path.c_str(), O_WRONLY);
  ASSERT_GE(w, 0) << path << ": " << std::strerror(errno);
  unlink(path.c_str());
  rmdir(path.substr(0, path.rfind('/')).c_str());
  std::vector<char> bytes(kLen);
  testing::fill_pattern(bytes.data(), kLen, 77);
  auto feed = [&](size_t from, size_t n) {
    return write(w, bytes.data() + from, n) == static_cast<ssize_t>(n);
  };
  auto name = agent->fetch_remote_metadata("127.0.0.1", port);  // with the FIFO's region
  ASSERT_TRUE(name.ok()) << name.error().to_string();

  auto req = agent->create_request(Op::Read, local_descs({{0, kLen}}),
                                   DescList(MemType::File, {{0, kLen, fifo_fd}}), "owner");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  // Half the bytes: once the owner has taken them, its read is under way and waits.
  ASSERT_TRUE(feed(0, kLen / 2));
  int queued = -1;
  for (int i = 0; i < 30000 && queued != 0; ++i) {
    ASSERT_EQ(ioctl(w, FIONREAD, &queued), 0);
    if (queued != 0) std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(queued, 0) << "the owner never read from the FIFO";

  ASSERT_TRUE(agent->gen_notif("owner", "busy").ok());
  std::optional<std::string> got;
  for (int i = 0; i < 3000 && got != "NOTIFS initiator:busy"; ++i) {
    got = owner->ask("notifs");
    if (got != "NOTIFS initiator:busy") std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(got, "NOTIFS initiator:busy");
  ASSERT_TRUE(run(Op::Read, local_descs({{kLen, 4096}}),
                  testing::descs_at(MemType::Dram, owner_addr, {{0, 4096}}))
                  .ok());
  EXPECT_EQ(testing::find_pattern_mismatch(static_cast<char*>(local.data()) + kLen, 4096, 1),
            SIZE_MAX);
  EXPECT_EQ((*req)->state(), XferState::InProgress);

  ASSERT_TRUE(feed(kLen / 2, kLen / 2));
  Status st = (*req)->wait(30s);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  EXPECT_EQ(std::memcmp(local.data(), bytes.data(), kLen), 0);
  close(w);
}

TEST_P(RemoteFile, RangesOutsideTheRegisteredFileFailBeforeAnythingMoves) {
  auto past = agent->create_request(Op::Write, local_descs({{0, 8192}}),
                                    file_descs({{kRegionBytes - 4096, 8192}}), "owner");
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.code(), ErrorCode::OutOfBounds) << past.error().to_string();
  DescList other(MemType::File, {{0, 4096, fd + 100}});  // a file the owner never registered
  auto unknown = agent->create_request(Op::Read, local_descs({{0, 4096}}), other, "owner");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.code(), ErrorCode::OutOfBounds) << unknown.error().to_string();
  // Nothing was written: the file's last bytes are as they were.
  const std::string last = std::to_string(kFileBytes - 4096);
  EXPECT_EQ(owner->ask("checkfile " + std::to_string(fd) + " " + last + " 4096 41 " + last), "OK");
}

TEST_P(RemoteFile, OwnerKilledMidReadFailsWithinThePeerTimeout) {
  auto req = agent->create_request(Op::Read, local_descs({{0, kFileBytes}}),
                                   file_descs({{0, kFileBytes}}), "owner");
  ASSERT_TRUE(req.ok()) << req.error().to_string();
  ASSERT_TRUE((*req)->post().ok());
  owner->kill_now();
  owner->wait();
  const auto start = std::chrono::steady_clock::now();
  Status st = (*req)->wait(peer_timeout() + 5s);
  if (st) st = (*req)->post();  // it may have finished before the kill; the next one fails
  if (st) st = (*req)->wait(peer_timeout() + 5s);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(st.code() == ErrorCode::Remote || st.code() == ErrorCode::Timeout)
      << st.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start, peer_timeout() + 5s);
  owner.reset();
}

// A WRITE destroyed in flight reads no local byte after its destructor has returned: its
// chunks still being sent are waited for, so the buffer may be unmapped at once (a chunk
// sent from it afterwards would fault).
TEST_P(RemoteFile, WriteDestroyedInFlightReadsNothingAfterward) {
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    {
      auto src = SystemAllocator().allocate(kFileBytes);
      ASSERT_TRUE(src.ok());
      testing::fill_pattern(src->data(), kFileBytes, 70 + round);
      ASSERT_TRUE(agent->register_storage(*src).ok());
      auto req = agent->create_request(
          Op::Write, testing::descs_at(MemType::Dram, src->addr(), {{0, kFileBytes}}),
          file_descs({{0, kFileBytes}}), "owner");
      ASSERT_TRUE(req.ok()) << req.error().to_string();
      ASSERT_TRUE((*req)->post().ok());
    }  // the request, then the buffer (deregistered and unmapped), while chunks are in flight
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(run(Op::Read, local_descs({{0, 4096}}), file_descs({{0, 4096}})).ok());
      std::this_thread::sleep_for(5ms);
    }
  }
}

// The owner serves peers from at most file_staging_mib of staging memory (1 MiB here):
// while its one buffer is taken, the WRITE chunks that arrive are answered "busy" and
// resent by this agent, and every byte still lands. The buffer is held on purpose, by a
// READ of a FIFO that waits for its bytes, so no chunk can find it free by luck of
// timing (a loaded machine spaced chunks so far apart that each found it free).
class RemoteFileOneStagingBuffer : public RemoteFile {
 protected:
  RemoteFileOneStagingBuffer() { owner_env["KVBM_UCX_FILE_STAGING_MIB"] = "1"; }
};

// A READ destroyed with its chunks at the owner: their replies, owed to this agent's
// polls, hold the owner's one staging buffer until polled for. This agent keeps polling
// for them though it has nothing else in flight, so another initiator's READ is served
// at once, not once the owner gives up on them.
TEST_P(RemoteFileOneStagingBuffer, AReadDestroyedInFlightLeavesTheStagingToOthers) {
  AgentConfig config;
  config.peer_timeout = peer_timeout();
  auto other = Agent::create("other", config);
  ASSERT_TRUE(other.ok()) << other.error().to_string();
  auto buf = SystemAllocator().allocate(4096);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE((*other)->register_storage(*buf).ok());
  ASSERT_TRUE((*other)->fetch_remote_metadata("127.0.0.1", port).ok());
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    {
      auto req = agent->create_request(Op::Read, local_descs({{0, kFileBytes}}),
                                       file_descs({{0, kFileBytes}}), "owner");
      ASSERT_TRUE(req.ok()) << req.error().to_string();
      ASSERT_TRUE((*req)->post().ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(round));
    }  // destroyed with chunks in flight
    auto next = (*other)->create_request(Op::Read,
                                         testing::descs_at(MemType::Dram, buf->addr(), {{0, 4096}}),
                                         file_descs({{8192, 4096}}), "owner");
    ASSERT_TRUE(next.ok()) << next.error().to_string();
    ASSERT_TRUE((*next)->post().ok());
    // Well inside the owner's hold on unpolled bytes (OwedReplies::kHoldBytes, 10 s).
    auto st = (*next)->wait(std::chrono::seconds(5));
    ASSERT_TRUE(st.ok()) << st.error().to_string();
    EXPECT_EQ(
        testing::find_pattern_mismatch(static_cast<char*>(buf->data()), 4096, kFileSeed, 8192),
        SIZE_MAX);
  }
}

TEST_P(RemoteFileOneStagingBuffer, WritesTheOwnerIsTooBusyForAreResentAndLand) {
  testing::LogCapture log;
  constexpr size_t kFifoLen = 65536;  // one chunk; the FIFO's buffer holds it
  auto fifo = owner->ask("fifo " + std::to_string(kFifoLen));
  ASSERT_TRUE(fifo && fifo->rfind("OK ", 0) == 0) << fifo.value_or("<nothing>");
  uint64_t fifo_fd = 0;
  std::string path;
  std::istringstream(fifo->substr(3)) >> fifo_fd >> path;
  const int w = open(path.c_str(), O_WRONLY);
  ASSERT_GE(w, 0) << path << ": " << std::strerror(errno);
  unlink(path.c_str());
  rmdir(path.substr(0, path.rfind('/')).c_str());
  std::vector<char> fifo_bytes(kFifoLen);
  testing::fill_pattern(fifo_bytes.data(), kFifoLen, 78);
  ASSERT_TRUE(agent->fetch_remote_metadata("127.0.0.1", port).ok());  // with the FIFO's region

  // The READ takes the owner's one staging buffer: once its first half of the bytes is
  // gone from the FIFO, the owner's read is under way and waits for the rest.
  auto hold = agent->create_request(Op::Read, local_descs({{kFileBytes, kFifoLen}}),
                                    DescList(MemType::File, {{0, kFifoLen, fifo_fd}}), "owner");
  ASSERT_TRUE(hold.ok()) << hold.error().to_string();
  ASSERT_TRUE((*hold)->post().ok());
  ASSERT_EQ(write(w, fifo_bytes.data(), kFifoLen / 2), static_cast<ssize_t>(kFifoLen / 2));
  int queued = -1;
  for (int i = 0; i < 30000 && queued != 0; ++i) {
    ASSERT_EQ(ioctl(w, FIONREAD, &queued), 0);
    if (queued != 0) std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(queued, 0) << "the owner never read from the FIFO";

  constexpr size_t kPart = kFileBytes / 3;  // 4 MiB: a window of 4 chunks each
  testing::fill_pattern(local.data(), kFileBytes, 61);
  std::vector<std::unique_ptr<Request>> reqs;
  for (size_t i = 0; i < 3; ++i) {
    auto r = agent->create_request(Op::Write, local_descs({{i * kPart, kPart}}),
                                   file_descs({{i * kPart, kPart}}), "owner");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    ASSERT_TRUE((*r)->post().ok());
    reqs.push_back(std::move(*r));
  }
  // Every chunk that arrives now is answered "busy"; the first answer is logged here.
  for (int i = 0; i < 30000 && !log.contains("agent 'owner' has no staging memory free"); ++i) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(log.contains("agent 'owner' has no staging memory free"));
  // The rest of the FIFO's bytes end the READ and free the buffer: the WRITEs land.
  ASSERT_EQ(write(w, fifo_bytes.data() + kFifoLen / 2, kFifoLen / 2),
            static_cast<ssize_t>(kFifoLen / 2));
  close(w);
  for (auto& r : reqs) {
    auto st = r->wait(30s);
    EXPECT_TRUE(st.ok()) << st.error().to_string();
  }
  Status held = (*hold)->wait(30s);
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  EXPECT_EQ(std::memcmp(static_cast<char*>(local.data()) + kFileBytes, fifo_bytes.data(), kFifoLen),
            0);
  ASSERT_EQ(
      owner->ask("checkfile " + std::to_string(fd) + " 0 " + std::to_string(kFileBytes) + " 61 0"),
      "OK");
  // READs queue for the one buffer at the owner instead.
  std::memset(local.data(), 0, kFileBytes);
  ASSERT_TRUE(run(Op::Read, local_descs({{0, kFileBytes}}), file_descs({{0, kFileBytes}})).ok());
  EXPECT_EQ(testing::find_pattern_mismatch(local.data(), kFileBytes, 61), SIZE_MAX);
}

// This process owns the file, with one staging buffer for peers' chunks (1 MiB); writers
// are agent_peer processes this agent never connected to. A writer killed with its
// chunks under way (one in the owner's file I/O, others answered busy) must leave the
// owner serving the next writer. Over TCP, UCX destroys the endpoint it made for a
// failed initiator, telling no one: an owner that replied on it once the chunk's I/O
// was done crashed (staging_owed.h); replies now go only inside a poll's callback.
class RemoteFileServedHere : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    testing::use_transport(GetParam());
    ASSERT_EQ(setenv("KVBM_UCX_FILE_STAGING_MIB", "1", 1), 0);
    AgentConfig config;
    config.peer_timeout = peer_timeout();
    auto a = Agent::create("owner", config);
    unsetenv("KVBM_UCX_FILE_STAGING_MIB");
    ASSERT_TRUE(a.ok()) << a.error().to_string();
    agent = std::move(*a);
    auto p = agent->listen("127.0.0.1", 0);
    ASSERT_TRUE(p.ok()) << p.error().to_string();
    port = *p;
    ASSERT_GE(file.fd, 0);
    ASSERT_EQ(ftruncate(file.fd, kFileBytes), 0);
    auto reg = agent->register_memory(
        DescList(MemType::File, {{0, kFileBytes, static_cast<uint64_t>(file.fd)}}));
    ASSERT_TRUE(reg.ok()) << reg.error().to_string();
    registration = std::move(*reg);
  }

  // A writer process whose buffer holds pattern `seed`, connected to this agent.
  std::unique_ptr<ChildProcess> writer(const std::string& name, uint64_t seed) {
    std::unique_ptr<ChildProcess> w;
    auto ready = testing::start_agent_peer(
        w, {name, std::to_string(kFileBytes), std::to_string(seed)}, GetParam());
    EXPECT_TRUE(ready);
    EXPECT_EQ(w->ask("fetch " + std::to_string(port)).value_or("<nothing>"), "OK owner");
    return w;
  }
  std::string write_all(ChildProcess& w, bool wait) {
    return w
        .ask("writefile owner " + std::to_string(file.fd) + " " + std::to_string(kFileBytes) +
                 (wait ? " 1" : " 0"),
             60s)
        .value_or("<nothing>");
  }

  testing::TempFile file;
  std::unique_ptr<Agent> agent;
  std::unique_ptr<MemoryRegistration> registration;
  uint16_t port = 0;
};

TEST_P(RemoteFileServedHere, AWriterKilledMidWriteLeavesTheOwnerServingTheNext) {
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto dying = writer("dying" + std::to_string(round), 50 + round);
    // Connected both ways first: UCX 1.13 asserts (ucp_request.c, "got REP message") in
    // an owner whose wire-up answer to a peer that died meanwhile is still queued.
    ASSERT_EQ(dying->ask("writefile owner " + std::to_string(file.fd) + " 4096 1", 60s)
                  .value_or("<nothing>"),
              "OK");
    ASSERT_EQ(write_all(*dying, false), "OK");
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + 2 * round));  // under way
    dying->kill_now();
    ASSERT_TRUE(dying->wait().has_value());
    auto next = writer("next" + std::to_string(round), 60 + round);
    ASSERT_EQ(write_all(*next, true), "OK");
    std::vector<char> got(kFileBytes);
    ASSERT_EQ(pread(file.fd, got.data(), kFileBytes, 0), static_cast<ssize_t>(kFileBytes));
    EXPECT_EQ(testing::find_pattern_mismatch(got.data(), kFileBytes, 60 + round), SIZE_MAX);
    next->send("quit");
  }
}

// TCP: where UCX handles a peer's failure (over shared memory it leaves the endpoint).
INSTANTIATE_TEST_SUITE_P(Ucx, RemoteFileServedHere, ::testing::Values(Transport{"tcp", "tcp,self"}),
                         [](const auto& info) { return std::string(info.param.name); });

INSTANTIATE_TEST_SUITE_P(Ucx, RemoteFileOneStagingBuffer,
                         ::testing::Values(Transport{"shm", "sm,self"},
                                           Transport{"tcp", "tcp,self"}),
                         [](const auto& info) { return std::string(info.param.name); });

INSTANTIATE_TEST_SUITE_P(Ucx, RemoteFile,
                         ::testing::Values(Transport{"shm", "sm,self"},
                                           Transport{"tcp", "tcp,self"}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace kvbm::xfer
