// The metadata side channel: serving and fetching, provider failures, and peers that
// refuse, stall, lie about lengths or vanish. Loopback only.
#include "xfer/side_channel.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace kvbm::xfer::detail {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr size_t kMiB = size_t{1} << 20;

std::unique_ptr<SideChannelServer> serve(SideChannelServer::Provider provider,
                                         const std::string& host = "127.0.0.1") {
  auto server = SideChannelServer::start(host, 0, std::move(provider));
  EXPECT_TRUE(server.ok()) << server.error().to_string();
  return server ? std::move(*server) : nullptr;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A plain TCP socket on 127.0.0.1 (any port), for playing a misbehaving peer.
class RawSocket {
 public:
  RawSocket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {}
  ~RawSocket() { close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  uint16_t bind_any() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
    socklen_t len = sizeof a;
    EXPECT_EQ(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len), 0);
    return ntohs(a.sin_port);
  }
  uint16_t listen_any() {
    const uint16_t port = bind_any();
    EXPECT_EQ(::listen(fd_, 16), 0) << std::strerror(errno);
    return port;
  }
  bool connect_to(uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  // Reads until EOF, error, or `limit` bytes; returns the count.
  size_t drain(size_t limit) {
    std::vector<char> buf(64 * 1024);
    size_t total = 0;
    while (total < limit) {
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n <= 0) break;
      total += static_cast<size_t>(n);
    }
    return total;
  }

 private:
  int fd_;
};

// A fake server that answers one connection with `reply`, then closes it.
class FakeServer {
 public:
  explicit FakeServer(std::string reply) : port_(listener_.listen_any()) {
    thread_ = std::thread([this, reply = std::move(reply)] {
      pollfd p{listener_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) return;
      const int c = ::accept(listener_.fd(), nullptr, nullptr);
      if (c < 0) return;
      [[maybe_unused]] ssize_t n = ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      ::close(c);
    });
  }
  ~FakeServer() { thread_.join(); }
  uint16_t port() const { return port_; }

 private:
  RawSocket listener_;
  uint16_t port_;
  std::thread thread_;
};

TEST(SideChannel, ServesAndFetches) {
  const std::string blob("meta\0data\xff", 10);
  auto server = serve([&]() -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  EXPECT_NE(server->port(), 0);
  auto got = fetch_blob("127.0.0.1", server->port(), 2s, 1024);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, blob);
}

TEST(SideChannel, ServesEmptyAndLargeBlobs) {
  std::string blob;
  auto server = serve([&]() -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  auto empty = fetch_blob("127.0.0.1", server->port(), 2s, 0);
  ASSERT_TRUE(empty.ok()) << empty.error().to_string();
  EXPECT_EQ(*empty, "");

  blob.resize(9 * kMiB + 7);
  testing::fill_pattern(blob.data(), blob.size(), 42);
  auto large = fetch_blob("127.0.0.1", server->port(), 10s, blob.size());
  ASSERT_TRUE(large.ok()) << large.error().to_string();
  EXPECT_EQ(*large, blob);
}

TEST(SideChannel, PortZeroPicksDistinctFreePorts) {
  auto provider = []() -> Result<std::string> { return std::string("x"); };
  auto a = serve(provider);
  auto b = serve(provider);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->port(), 0);
  EXPECT_NE(a->port(), b->port());
  // A taken port cannot be bound again, and the error names host and port.
  auto clash = SideChannelServer::start("127.0.0.1", a->port(), provider);
  EXPECT_ERROR(clash, ErrorCode::Io, "127.0.0.1:" + std::to_string(a->port()));
}

TEST(SideChannel, ProviderRunsPerConnection) {
  std::atomic<int> calls{0};
  auto server = serve([&]() -> Result<std::string> { return std::to_string(++calls); });
  ASSERT_TRUE(server);
  EXPECT_EQ(*fetch_blob("127.0.0.1", server->port(), 2s, 16), "1");
  EXPECT_EQ(*fetch_blob("127.0.0.1", server->port(), 2s, 16), "2");
}

TEST(SideChannel, ProviderErrorReachesTheClient) {
  auto server =
      serve([]() -> Result<std::string> { return err(ErrorCode::NotFound, "no metadata yet"); });
  ASSERT_TRUE(server);
  const auto where = "127.0.0.1:" + std::to_string(server->port());
  auto got = fetch_blob("127.0.0.1", server->port(), 2s, 1024);
  EXPECT_ERROR(got, ErrorCode::Remote, "NotFound: no metadata yet");
  EXPECT_ERROR(got, ErrorCode::Remote, where);
}

TEST(SideChannel, ProviderThatThrowsDoesNotStopTheServer) {
  std::atomic<int> calls{0};
  auto server = serve([&]() -> Result<std::string> {
    if (calls++ == 0) throw std::runtime_error("boom");
    return std::string("fine");
  });
  ASSERT_TRUE(server);
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), 2s, 1024), ErrorCode::Remote, "boom");
  auto again = fetch_blob("127.0.0.1", server->port(), 2s, 1024);
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(*again, "fine");
}

TEST(SideChannel, StartRejectsBadArguments) {
  auto provider = []() -> Result<std::string> { return std::string("x"); };
  EXPECT_ERROR(SideChannelServer::start("", 0, provider), ErrorCode::InvalidArgument, "empty host");
  EXPECT_ERROR(SideChannelServer::start("127.0.0.1", 0, nullptr), ErrorCode::InvalidArgument,
               "no provider");
  EXPECT_ERROR(SideChannelServer::start("300.1.2.3", 0, provider), ErrorCode::InvalidArgument,
               "300.1.2.3");
  // A well-formed address this machine does not have (TEST-NET-1).
  EXPECT_ERROR(SideChannelServer::start("192.0.2.1", 0, provider), ErrorCode::Io, "192.0.2.1:0");
}

TEST(SideChannel, FetchRejectsBadArguments) {
  EXPECT_ERROR(fetch_blob("127.0.0.1", 1, 0ms, 16), ErrorCode::InvalidArgument, "timeout 0 ms");
  EXPECT_ERROR(fetch_blob("300.1.2.3", 1, 1s, 16), ErrorCode::InvalidArgument,
               "cannot resolve '300.1.2.3'");
}

TEST(SideChannel, ConnectRefusedIsIo) {
  RawSocket holder;  // bound, not listening: the port stays ours and refuses connections
  const uint16_t port = holder.bind_any();
  EXPECT_ERROR(fetch_blob("127.0.0.1", port, 2s, 16), ErrorCode::Io,
               "127.0.0.1:" + std::to_string(port) + ": connect: Connection refused");
}

TEST(SideChannel, ServerThatNeverAnswersTimesOut) {
  RawSocket listener;  // the kernel completes the handshake; nobody ever accepts
  const uint16_t port = listener.listen_any();
  const auto t0 = Clock::now();
  auto got = fetch_blob("127.0.0.1", port, 300ms, 16);
  const auto elapsed = Clock::now() - t0;
  EXPECT_ERROR(got, ErrorCode::Timeout, "127.0.0.1:" + std::to_string(port));
  EXPECT_ERROR(got, ErrorCode::Timeout, "within 300 ms");
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 2s);
}

TEST(SideChannel, WrongMagicIsRejected) {
  FakeServer fake("BADMAGIC" + le64(3) + "abc");
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, 16), ErrorCode::InvalidArgument,
               "wrong magic 'BADMAGIC'");
}

TEST(SideChannel, OversizedDeclaredLengthIsRejected) {
  FakeServer fake("KVBMMD01" + le64(uint64_t{1} << 40));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, 4096), ErrorCode::InvalidArgument,
               "declared length 1099511627776 exceeds max_bytes 4096");
}

TEST(SideChannel, LyingLengthWithoutLimitFailsWithoutAllocatingIt) {
  // max_bytes allows it, the peer sends 5 bytes of a declared 2^62: a short payload, not
  // a 4 EiB allocation.
  FakeServer fake("KVBMMD01" + le64(uint64_t{1} << 62) + "hello");
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, std::numeric_limits<size_t>::max()),
               ErrorCode::InvalidArgument, "after 5 of 4611686018427387904 payload bytes");
}

TEST(SideChannel, ShortPayloadIsRejected) {
  FakeServer fake("KVBMMD01" + le64(100) + std::string(10, 'p'));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, 4096), ErrorCode::InvalidArgument,
               "after 10 of 100 payload bytes");
}

TEST(SideChannel, ShortHeaderIsRejected) {
  FakeServer fake("KVBMMD01" + std::string("\x05\x00", 2));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, 4096), ErrorCode::InvalidArgument,
               "after 10 of 16 header bytes");
}

TEST(SideChannel, OversizedErrorTextIsRejected) {
  FakeServer fake("KVBMER01" + le64(1 << 20));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), 2s, 4096), ErrorCode::InvalidArgument,
               "error text of 1048576 bytes exceeds 4096");
}

TEST(SideChannel, ManyConcurrentFetches) {
  // More clients than the server's 64 connection slots: the rest wait in the backlog.
  const std::string blob(64 * 1024, 'm');
  auto server = serve([&]() -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  constexpr int kThreads = 100;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        auto got = fetch_blob("127.0.0.1", server->port(), 20s, blob.size());
        if (got && *got == blob) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), kThreads * 5);
}

TEST(SideChannel, StuckClientDoesNotBlockOthers) {
  // Far more than the socket buffers of a client that does not read hold, so the server
  // cannot finish sending to it.
  std::string blob(16 * kMiB, 's');
  auto server = serve([&]() -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  RawSocket stuck;
  ASSERT_TRUE(stuck.connect_to(server->port()));
  std::this_thread::sleep_for(100ms);  // let the server accept it and fill its buffers

  // Served alongside, not after the stuck one is dropped (5 s).
  const auto t0 = Clock::now();
  auto got = fetch_blob("127.0.0.1", server->port(), 10s, blob.size());
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(got->size(), blob.size());
  EXPECT_LT(Clock::now() - t0, 4s);
}

TEST(SideChannel, StuckClientIsDroppedAfterTheServeDeadline) {
  std::string blob(16 * kMiB, 's');
  auto server = serve([&]() -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  RawSocket stuck;
  ASSERT_TRUE(stuck.connect_to(server->port()));
  std::this_thread::sleep_for(6s);  // past the server's 5 s per connection
  // The server has closed the connection: reading ends early, well short of the blob.
  const size_t got = stuck.drain(blob.size() + 16);
  EXPECT_LT(got, blob.size());
}

TEST(SideChannel, DestructionWithAClientConnectedIsPrompt) {
  std::string blob(16 * kMiB, 'd');
  std::atomic<bool> served{false};
  auto server = serve([&]() -> Result<std::string> {
    served = true;
    return blob;
  });
  ASSERT_TRUE(server);
  RawSocket client;
  ASSERT_TRUE(client.connect_to(server->port()));
  for (int i = 0; i < 200 && !served; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(served);

  const auto t0 = Clock::now();
  server.reset();
  EXPECT_LT(Clock::now() - t0, 1s);
  // The client sees the connection end, short of the whole blob.
  EXPECT_LT(client.drain(blob.size() + 16), blob.size());
}

TEST(SideChannel, Ipv6Loopback) {
  auto started = SideChannelServer::start(
      "::1", 0, []() -> Result<std::string> { return std::string("six"); });
  if (!started && started.code() == ErrorCode::Io) {
    GTEST_SKIP() << "no IPv6 loopback here: " << started.error().to_string();
  }
  ASSERT_TRUE(started.ok()) << started.error().to_string();
  auto got = fetch_blob("::1", (*started)->port(), 2s, 16);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, "six");
  // Nobody listens on IPv4 at that port; errors bracket the IPv6 address.
  RawSocket holder;
  const uint16_t port = holder.bind_any();
  EXPECT_ERROR(fetch_blob("::1", port, 2s, 16), ErrorCode::Io, "[::1]:" + std::to_string(port));
}

}  // namespace
}  // namespace kvbm::xfer::detail
