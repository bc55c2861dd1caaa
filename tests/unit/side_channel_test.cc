// The metadata side channel: serving and fetching by key, provider failures, malformed
// requests, and peers that refuse, stall, stay silent, lie about lengths or vanish.
// Loopback only.
#include "xfer/side_channel.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "support/test_support.h"
#include "xfer/metadata.h"

namespace kvbm::xfer::detail {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr size_t kMiB = size_t{1} << 20;

// A provider written in plain strings; the server takes shared buffers.
using StringProvider = std::function<Result<std::string>(const std::string& key)>;

SideChannelServer::Provider blobs(StringProvider provider) {
  if (!provider) return nullptr;
  return [provider = std::move(provider)](const std::string& key) -> Result<Blob> {
    auto bytes = provider(key);
    if (!bytes) return bytes.error();
    return std::make_shared<const std::string>(std::move(*bytes));
  };
}

std::unique_ptr<SideChannelServer> serve(StringProvider provider,
                                         const std::string& host = "127.0.0.1",
                                         SideChannelOptions options = {}) {
  auto server = SideChannelServer::start(host, 0, blobs(std::move(provider)), std::move(options));
  EXPECT_TRUE(server.ok()) << server.error().to_string();
  return server ? std::move(*server) : nullptr;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

std::string le32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// Polls `done` until it holds, for up to 10 s (a bound for a hung server, not a timing).
template <typename F>
bool wait_until(F done) {
  for (const auto until = Clock::now() + 10s; Clock::now() < until;) {
    if (done()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return done();
}

// The request a client sends for `key` (empty: the metadata).
std::string request_for(const std::string& key) {
  return "KVBMRQ01" + le32(static_cast<uint32_t>(key.size())) + key;
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
  // Bounds each blocking recv, so that a server that never closes fails the test
  // rather than hanging it.
  void set_recv_timeout(std::chrono::seconds limit) {
    const timeval tv{static_cast<time_t>(limit.count()), 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  bool send_all(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
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

// Connects to 127.0.0.1:port, sends `request` (then half-closes, if asked), and returns
// everything the server writes before it closes (within 10 s).
std::string exchange(uint16_t port, const std::string& request, bool half_close = false) {
  RawSocket client;
  EXPECT_TRUE(client.connect_to(port)) << std::strerror(errno);
  EXPECT_TRUE(client.send_all(request)) << std::strerror(errno);
  if (half_close) ::shutdown(client.fd(), SHUT_WR);
  std::string got;
  char buf[4096];
  for (const auto until = Clock::now() + 10s; Clock::now() < until;) {
    pollfd p{client.fd(), POLLIN, 0};
    if (::poll(&p, 1, 100) != 1) continue;
    const ssize_t n = ::recv(client.fd(), buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

// The text of an error reply ("KVBMER01", length, text), or "<not an error reply: ...>".
std::string error_text(const std::string& reply) {
  if (reply.size() < 16 || reply.compare(0, 8, "KVBMER01") != 0 ||
      reply.substr(8, 8) != le64(reply.size() - 16)) {
    return "<not an error reply: " + std::to_string(reply.size()) + " bytes>";
  }
  return reply.substr(16);
}

// A fake server that reads one connection's request, answers it with `reply`, then
// closes it. request() is what it read (after the fake is done: call join() first).
class FakeServer {
 public:
  explicit FakeServer(std::string reply) : port_(listener_.listen_any()) {
    thread_ = std::thread([this, reply = std::move(reply)] {
      pollfd p{listener_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) return;
      const int c = ::accept(listener_.fd(), nullptr, nullptr);
      if (c < 0) return;
      const timeval limit{5, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
      char header[12];
      if (::recv(c, header, sizeof header, MSG_WAITALL) == 12) {
        request_.assign(header, 12);
        uint32_t len = 0;
        for (int i = 0; i < 4; ++i)
          len |= uint32_t{static_cast<unsigned char>(header[8 + i])} << (8 * i);
        std::string key(std::min<uint32_t>(len, 4096), '\0');
        // No recv of 0 bytes: it would wait for data that never comes.
        const ssize_t n = key.empty() ? 0 : ::recv(c, key.data(), key.size(), MSG_WAITALL);
        if (n > 0) request_.append(key.data(), static_cast<size_t>(n));
      }
      [[maybe_unused]] ssize_t n = ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      ::close(c);
    });
  }
  ~FakeServer() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }
  const std::string& request() const { return request_; }

 private:
  RawSocket listener_;
  uint16_t port_;
  std::thread thread_;
  std::string request_;
};

TEST(SideChannel, ServesAndFetches) {
  const std::string blob("meta\0data\xff", 10);
  auto server = serve([&](const std::string&) -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  EXPECT_NE(server->port(), 0);
  auto got = fetch_blob("127.0.0.1", server->port(), "", 2s, 1024);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, blob);
}

TEST(SideChannel, ServesEmptyAndLargeBlobs) {
  std::string blob;
  auto server = serve([&](const std::string&) -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  auto empty = fetch_blob("127.0.0.1", server->port(), "", 2s, 0);
  ASSERT_TRUE(empty.ok()) << empty.error().to_string();
  EXPECT_EQ(*empty, "");

  blob.resize(9 * kMiB + 7);
  testing::fill_pattern(blob.data(), blob.size(), 42);
  auto large = fetch_blob("127.0.0.1", server->port(), "", 10s, blob.size());
  ASSERT_TRUE(large.ok()) << large.error().to_string();
  EXPECT_EQ(*large, blob);
}

TEST(SideChannel, PortZeroPicksDistinctFreePorts) {
  auto provider = [](const std::string&) -> Result<std::string> { return std::string("x"); };
  auto a = serve(provider);
  auto b = serve(provider);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->port(), 0);
  EXPECT_NE(a->port(), b->port());
  // A taken port cannot be bound again, and the error names host and port.
  auto clash = SideChannelServer::start("127.0.0.1", a->port(), blobs(provider));
  EXPECT_ERROR(clash, ErrorCode::Io, "127.0.0.1:" + std::to_string(a->port()));
}

TEST(SideChannel, ProviderRunsPerConnection) {
  std::atomic<int> calls{0};
  auto server =
      serve([&](const std::string&) -> Result<std::string> { return std::to_string(++calls); });
  ASSERT_TRUE(server);
  EXPECT_EQ(*fetch_blob("127.0.0.1", server->port(), "", 2s, 16), "1");
  EXPECT_EQ(*fetch_blob("127.0.0.1", server->port(), "", 2s, 16), "2");
}

TEST(SideChannel, ProviderErrorReachesTheClient) {
  auto server = serve([](const std::string&) -> Result<std::string> {
    return err(ErrorCode::NotFound, "no metadata yet");
  });
  ASSERT_TRUE(server);
  const auto where = "127.0.0.1:" + std::to_string(server->port());
  auto got = fetch_blob("127.0.0.1", server->port(), "", 2s, 1024);
  EXPECT_ERROR(got, ErrorCode::Remote, "NotFound: no metadata yet");
  EXPECT_ERROR(got, ErrorCode::Remote, where);
}

TEST(SideChannel, ProviderThatThrowsDoesNotStopTheServer) {
  std::atomic<int> calls{0};
  auto server = serve([&](const std::string&) -> Result<std::string> {
    if (calls++ == 0) throw std::runtime_error("boom");
    return std::string("fine");
  });
  ASSERT_TRUE(server);
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), "", 2s, 1024), ErrorCode::Remote, "boom");
  auto again = fetch_blob("127.0.0.1", server->port(), "", 2s, 1024);
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(*again, "fine");
}

TEST(SideChannel, StartRejectsBadArguments) {
  auto provider = blobs([](const std::string&) -> Result<std::string> { return std::string("x"); });
  EXPECT_ERROR(SideChannelServer::start("", 0, provider), ErrorCode::InvalidArgument, "empty host");
  EXPECT_ERROR(SideChannelServer::start("127.0.0.1", 0, nullptr), ErrorCode::InvalidArgument,
               "no provider");
  EXPECT_ERROR(SideChannelServer::start("300.1.2.3", 0, provider), ErrorCode::InvalidArgument,
               "300.1.2.3");
  // A well-formed address this machine does not have (TEST-NET-1).
  EXPECT_ERROR(SideChannelServer::start("192.0.2.1", 0, provider), ErrorCode::Io, "192.0.2.1:0");
}

TEST(SideChannel, FetchRejectsBadArguments) {
  EXPECT_ERROR(fetch_blob("127.0.0.1", 1, "", 0ms, 16), ErrorCode::InvalidArgument, "timeout 0 ms");
  EXPECT_ERROR(fetch_blob("300.1.2.3", 1, "", 1s, 16), ErrorCode::InvalidArgument,
               "cannot resolve '300.1.2.3'");
}

TEST(SideChannel, ConnectRefusedIsIo) {
  RawSocket holder;  // bound, not listening: the port stays ours and refuses connections
  const uint16_t port = holder.bind_any();
  EXPECT_ERROR(fetch_blob("127.0.0.1", port, "", 2s, 16), ErrorCode::Io,
               "127.0.0.1:" + std::to_string(port) + ": connect: Connection refused");
}

TEST(SideChannel, ServerThatNeverAnswersTimesOut) {
  RawSocket listener;  // the kernel completes the handshake; nobody ever accepts
  const uint16_t port = listener.listen_any();
  const auto t0 = Clock::now();
  auto got = fetch_blob("127.0.0.1", port, "", 300ms, 16);
  const auto elapsed = Clock::now() - t0;
  EXPECT_ERROR(got, ErrorCode::Timeout, "127.0.0.1:" + std::to_string(port));
  EXPECT_ERROR(got, ErrorCode::Timeout, "within 300 ms");
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 2s);
}

TEST(SideChannel, WrongMagicIsRejected) {
  FakeServer fake("BADMAGIC" + le64(3) + "abc");
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 16), ErrorCode::InvalidArgument,
               "wrong magic 'BADMAGIC'");
}

TEST(SideChannel, OversizedDeclaredLengthIsRejected) {
  FakeServer fake("KVBMMD01" + le64(uint64_t{1} << 40));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 4096), ErrorCode::InvalidArgument,
               "declared length 1099511627776 exceeds max_bytes 4096");
}

TEST(SideChannel, LyingLengthWithoutLimitFailsWithoutAllocatingIt) {
  // max_bytes allows it, the peer sends 5 bytes of a declared 2^62: a short payload, not
  // a 4 EiB allocation.
  FakeServer fake("KVBMMD01" + le64(uint64_t{1} << 62) + "hello");
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, std::numeric_limits<size_t>::max()),
               ErrorCode::InvalidArgument, "after 5 of 4611686018427387904 payload bytes");
}

TEST(SideChannel, ShortPayloadIsRejected) {
  FakeServer fake("KVBMMD01" + le64(100) + std::string(10, 'p'));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 4096), ErrorCode::InvalidArgument,
               "after 10 of 100 payload bytes");
}

TEST(SideChannel, ShortHeaderIsRejected) {
  FakeServer fake("KVBMMD01" + std::string("\x05\x00", 2));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 4096), ErrorCode::InvalidArgument,
               "after 10 of 16 header bytes");
}

TEST(SideChannel, OversizedErrorTextIsRejected) {
  FakeServer fake("KVBMER01" + le64(1 << 20));
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 4096), ErrorCode::InvalidArgument,
               "error text of 1048576 bytes exceeds 4096");
}

TEST(SideChannel, ManyConcurrentFetches) {
  // Many clients at once, each served in turn by the one server thread.
  const std::string blob(64 * 1024, 'm');
  auto server = serve([&](const std::string&) -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  constexpr int kThreads = 100;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        auto got = fetch_blob("127.0.0.1", server->port(), "", 20s, blob.size());
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
  auto server = serve([&](const std::string&) -> Result<std::string> { return blob; });
  ASSERT_TRUE(server);
  RawSocket stuck;
  ASSERT_TRUE(stuck.connect_to(server->port()));
  ASSERT_TRUE(stuck.send_all(request_for("")));
  std::this_thread::sleep_for(100ms);  // let the server accept it and fill its buffers

  // Served alongside, not after the stuck one is dropped (5 s).
  const auto t0 = Clock::now();
  auto got = fetch_blob("127.0.0.1", server->port(), "", 10s, blob.size());
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(got->size(), blob.size());
  EXPECT_LT(Clock::now() - t0, 4s);
}

TEST(SideChannel, StuckClientIsDroppedAtTheReplyDeadline) {
  std::string blob(16 * kMiB, 's');
  SideChannelOptions options;
  options.reply_timeout = 300ms;
  auto server =
      serve([&](const std::string&) -> Result<std::string> { return blob; }, "127.0.0.1", options);
  ASSERT_TRUE(server);
  RawSocket stuck;
  stuck.set_recv_timeout(15s);
  ASSERT_TRUE(stuck.connect_to(server->port()));
  ASSERT_TRUE(stuck.send_all(request_for("")));
  // Dropped, and its buffer let go with it.
  ASSERT_TRUE(wait_until([&] {
    const auto st = server->stats();
    return st.timed_out == 1 && st.connections == 0 && st.reply_bytes == 0;
  }));
  // The server has closed the connection: reading ends early, well short of the blob.
  EXPECT_LT(stuck.drain(blob.size() + 16), blob.size());
}

TEST(SideChannel, DestructionWithAClientConnectedIsPrompt) {
  std::string blob(16 * kMiB, 'd');
  std::atomic<bool> served{false};
  auto server = serve([&](const std::string&) -> Result<std::string> {
    served = true;
    return blob;
  });
  ASSERT_TRUE(server);
  RawSocket client;
  ASSERT_TRUE(client.connect_to(server->port()));
  ASSERT_TRUE(client.send_all(request_for("")));
  for (int i = 0; i < 200 && !served; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(served);

  const auto t0 = Clock::now();
  server.reset();
  EXPECT_LT(Clock::now() - t0, 1s);
  // The client sees the connection end, short of the whole blob.
  EXPECT_LT(client.drain(blob.size() + 16), blob.size());
}

// --- Requests by key ---

// A provider in the agent's shape: the metadata under the empty key, items by key.
StringProvider items_provider(std::vector<std::string>* keys_seen = nullptr) {
  return [keys_seen](const std::string& key) -> Result<std::string> {
    if (keys_seen) keys_seen->push_back(key);
    if (key.empty()) return std::string("the metadata");
    if (key == "a") return std::string("item a");
    if (key == std::string("k\0\xff", 3)) return std::string("binary key");
    if (key == std::string(kMaxKeyBytes, 'L')) return std::string("longest key");
    return err(ErrorCode::NotFound, "no item '", key, "' published by agent 'fake'");
  };
}

TEST(SideChannelRequest, ServesTheMetadataAndItemsByKey) {
  std::vector<std::string> keys;  // read after the fetches, which the server answered
  auto server = serve(items_provider(&keys));
  ASSERT_TRUE(server);
  const uint16_t port = server->port();
  EXPECT_EQ(fetch_blob("127.0.0.1", port, "", 2s, 64).value(), "the metadata");
  EXPECT_EQ(fetch_blob("127.0.0.1", port, "a", 2s, 64).value(), "item a");
  EXPECT_EQ(fetch_blob("127.0.0.1", port, std::string("k\0\xff", 3), 2s, 64).value(), "binary key");
  EXPECT_EQ(fetch_blob("127.0.0.1", port, std::string(kMaxKeyBytes, 'L'), 2s, 64).value(),
            "longest key");
  // The provider saw each key exactly as sent.
  EXPECT_EQ(keys, (std::vector<std::string>{"", "a", std::string("k\0\xff", 3),
                                            std::string(kMaxKeyBytes, 'L')}));
}

TEST(SideChannelRequest, UnknownKeyIsARemoteErrorNamingIt) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  const auto where = "127.0.0.1:" + std::to_string(server->port());
  auto got = fetch_blob("127.0.0.1", server->port(), "x", 2s, 64);
  EXPECT_ERROR(got, ErrorCode::Remote, where + ": the server could not provide item 'x'");
  EXPECT_ERROR(got, ErrorCode::Remote, "NotFound: no item 'x' published by agent 'fake'");
  // Unprintable key bytes are escaped in the message.
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), std::string("\x01z", 2), 2s, 64),
               ErrorCode::Remote, "item '\\x01z'");
  // The server goes on serving.
  EXPECT_EQ(fetch_blob("127.0.0.1", server->port(), "a", 2s, 64).value(), "item a");
}

TEST(SideChannelRequest, ClientRejectsAnOverlongKeyBeforeConnecting) {
  RawSocket holder;  // bound, not listening: connecting would be refused (Io)
  const uint16_t port = holder.bind_any();
  EXPECT_ERROR(fetch_blob("127.0.0.1", port, std::string(kMaxKeyBytes + 1, 'k'), 2s, 64),
               ErrorCode::InvalidArgument, "key of 257 bytes exceeds 256");
}

TEST(SideChannelRequest, ClientSendsMagicLengthAndKey) {
  FakeServer fake("KVBMMD01" + le64(2) + "ok");
  auto got = fetch_blob("127.0.0.1", fake.port(), "blocks/7", 2s, 64);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, "ok");
  fake.join();
  EXPECT_EQ(fake.request(), "KVBMRQ01" + le32(8) + "blocks/7");
}

TEST(SideChannelRequest, ServerAnswersByteExactRequestsFromARawClient) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  EXPECT_EQ(exchange(server->port(), request_for("a")), "KVBMMD01" + le64(6) + "item a");
  EXPECT_EQ(exchange(server->port(), request_for("")), "KVBMMD01" + le64(12) + "the metadata");
}

TEST(SideChannelRequest, OverlongDeclaredKeyIsRefusedWithoutReadingIt) {
  std::atomic<int> calls{0};
  auto server = serve([&](const std::string&) -> Result<std::string> {
    ++calls;
    return std::string("x");
  });
  ASSERT_TRUE(server);
  EXPECT_EQ(error_text(exchange(server->port(), "KVBMRQ01" + le32(257))),
            "bad request: request key of 257 bytes exceeds 256");
  EXPECT_EQ(error_text(exchange(server->port(), "KVBMRQ01" + le32(0xffffffffu))),
            "bad request: request key of 4294967295 bytes exceeds 256");
  EXPECT_EQ(calls.load(), 0);
}

TEST(SideChannelRequest, WrongRequestMagicIsRefused) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  EXPECT_EQ(error_text(exchange(server->port(), "GARBAGE!" + le32(0))),
            "bad request: wrong request magic 'GARBAGE!' (expected 'KVBMRQ01' or 'KVBMRQ02')");
  // An old-style reply magic sent as a request, with unprintable length bytes after it.
  EXPECT_EQ(error_text(exchange(server->port(), std::string("KVBMMD\x00\x01", 8) + le32(0))),
            "bad request: wrong request magic 'KVBMMD\\x00\\x01' (expected 'KVBMRQ01' or "
            "'KVBMRQ02')");
}

TEST(SideChannelRequest, TruncatedRequestIsRefused) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  // The client half-closes: it sends no more, but can still read why.
  EXPECT_EQ(error_text(exchange(server->port(), "KVBMRQ", /*half_close=*/true)),
            "bad request: request ended after 6 of 12 bytes");
  EXPECT_EQ(error_text(exchange(server->port(), "KVBMRQ01" + le32(10) + "abc", true)),
            "bad request: request ended after 15 of 22 bytes");
  EXPECT_EQ(error_text(exchange(server->port(), "", true)),
            "bad request: request ended after 0 of 12 bytes");
}

TEST(SideChannelRequest, RequestInPiecesIsServed) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  RawSocket client;
  client.set_recv_timeout(15s);
  ASSERT_TRUE(client.connect_to(server->port()));
  const std::string request = request_for("a");
  for (char byte : request) {  // one byte at a time, well within the bound
    ASSERT_TRUE(client.send_all(std::string(1, byte)));
    std::this_thread::sleep_for(5ms);
  }
  const std::string expected = "KVBMMD01" + le64(6) + "item a";
  EXPECT_EQ(client.drain(1024), expected.size());
}

TEST(SideChannelRequest, GarbageDoesNotStopTheServer) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 50; ++i) {
    std::string junk(static_cast<size_t>(rng() % 600), '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    if (i % 5 == 0 && junk.size() >= 12) junk.replace(0, 8, "KVBMRQ01");  // a valid magic
    RawSocket client;
    client.set_recv_timeout(15s);
    ASSERT_TRUE(client.connect_to(server->port()));
    client.send_all(junk);  // may fail once the server has answered and closed
    ::shutdown(client.fd(), SHUT_WR);
    client.drain(1 << 20);  // an error reply, a reset, or EOF: anything but a hang
  }
  EXPECT_EQ(fetch_blob("127.0.0.1", server->port(), "a", 2s, 64).value(), "item a");
}

TEST(SideChannelRequest, SilentClientIsDroppedAtTheRequestDeadline) {
  std::atomic<int> calls{0};
  SideChannelOptions options;
  options.request_timeout = 500ms;
  auto server = serve(
      [&](const std::string&) -> Result<std::string> {
        ++calls;
        return std::string("x");
      },
      "127.0.0.1", options);
  ASSERT_TRUE(server);
  RawSocket silent;
  silent.set_recv_timeout(15s);
  const auto t0 = Clock::now();  // before the server can have accepted it
  ASSERT_TRUE(silent.connect_to(server->port()));
  // Others are served meanwhile, without waiting for the silent one.
  EXPECT_EQ(fetch_blob("127.0.0.1", server->port(), "", 2s, 16).value(), "x");
  // The server closes the silent connection at its bound, having sent nothing, and not
  // before it.
  EXPECT_EQ(silent.drain(1024), 0u);
  EXPECT_GE(Clock::now() - t0, 500ms);
  EXPECT_EQ(server->stats().timed_out, 1u);
  EXPECT_EQ(calls.load(), 1);
}

TEST(SideChannelRequest, DestructionWithASilentClientIsPrompt) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  RawSocket silent;
  silent.set_recv_timeout(15s);
  ASSERT_TRUE(silent.connect_to(server->port()));
  std::this_thread::sleep_for(50ms);  // accepted and waiting for a request
  const auto t0 = Clock::now();
  server.reset();
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(silent.drain(1024), 0u);
}

// --- Abuse: strangers that connect and stall, or ask for much and never read ---

// A client that connects, sends `bytes`, and then neither sends nor reads again. Its small
// receive buffer (set before connecting, so the window stays small) keeps the kernel from
// taking a big reply off the server's hands.
std::unique_ptr<RawSocket> stalled_client(uint16_t port, const std::string& bytes) {
  auto s = std::make_unique<RawSocket>();
  const int small = 4096;
  ::setsockopt(s->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  EXPECT_TRUE(s->connect_to(port)) << std::strerror(errno);
  EXPECT_TRUE(s->send_all(bytes));
  return s;
}

TEST(SideChannelAbuse, StalledAndNonReadingClientsDoNotStopALegitimateFetch) {
  constexpr size_t kStalled = 200, kNonReaders = 64;
  const auto big = std::make_shared<const std::string>(8 * kMiB, 'B');
  std::atomic<int> big_requests{0};
  auto server =
      SideChannelServer::start("127.0.0.1", 0, [&](const std::string& key) -> Result<Blob> {
        if (key != "big") return std::make_shared<const std::string>("small");
        ++big_requests;
        return big;  // one shared buffer, however many clients it goes to
      });
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  const uint16_t port = (*server)->port();

  std::vector<std::unique_ptr<RawSocket>> strangers;
  for (size_t i = 0; i < kStalled; ++i) strangers.push_back(stalled_client(port, "K"));
  for (size_t i = 0; i < kNonReaders; ++i)
    strangers.push_back(stalled_client(port, request_for("big")));
  ASSERT_TRUE(wait_until([&] {
    const auto st = (*server)->stats();
    return st.connections == kStalled + kNonReaders && st.replying == kNonReaders;
  })) << "connections "
      << (*server)->stats().connections << ", replying " << (*server)->stats().replying;

  auto got = fetch_blob("127.0.0.1", port, "", 2s, 64);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, "small");
  // The 64 replies share one buffer: the server holds the item once, not 64 copies
  // (the stats trail the server's thread by a moment: the fetch's own connection goes).
  EXPECT_EQ(big_requests.load(), static_cast<int>(kNonReaders));
  EXPECT_TRUE(wait_until([&] {
    const auto st = (*server)->stats();
    return st.replying == kNonReaders && st.reply_bytes == big->size();
  })) << "reply bytes "
      << (*server)->stats().reply_bytes;
  EXPECT_EQ((*server)->stats().evicted, 0u);
}

TEST(SideChannelAbuse, AFullServerDropsTheLongestWaitingConnectionFirst) {
  SideChannelOptions options;
  options.max_connections = 8;
  auto server = serve(items_provider(), "127.0.0.1", options);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<RawSocket>> stalled;
  for (size_t i = 0; i < 20; ++i) {
    stalled.push_back(stalled_client(server->port(), "K"));
    // Accepted in this order, so that "longest waiting" is well defined.
    const size_t evicted = i < 8 ? 0 : i + 1 - 8;
    ASSERT_TRUE(wait_until([&] {
      const auto st = server->stats();
      return st.connections == std::min<size_t>(i + 1, 8) && st.evicted == evicted;
    }));
  }
  EXPECT_EQ(server->stats().evicted, 12u);
  // A legitimate client takes the slot of the oldest stalled one left.
  EXPECT_EQ(fetch_blob("127.0.0.1", server->port(), "a", 2s, 64).value(), "item a");
  EXPECT_EQ(server->stats().evicted, 13u);
  // The first 13 were closed by the server (EOF, nothing sent); the 7 newest still wait.
  for (size_t i = 0; i < 13; ++i) {
    stalled[i]->set_recv_timeout(10s);
    EXPECT_EQ(stalled[i]->drain(16), 0u) << "stalled client " << i;
  }
  EXPECT_TRUE(wait_until([&] { return server->stats().connections == 7; }));
}

TEST(SideChannelAbuse, RepliesOverTheMemoryBoundAreRefusedAsBusy) {
  SideChannelOptions options;
  options.max_reply_bytes = 20 * kMiB;
  // A fresh buffer per request: two at once would need 32 MiB.
  auto server =
      serve([](const std::string&) -> Result<std::string> { return std::string(16 * kMiB, 'x'); },
            "127.0.0.1", options);
  ASSERT_TRUE(server);
  auto holder = stalled_client(server->port(), request_for(""));
  ASSERT_TRUE(wait_until([&] { return server->stats().reply_bytes == 16 * kMiB; }));
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), "", 2s, 32 * kMiB), ErrorCode::Remote,
               "busy: 16777216 bytes of replies are being sent; a reply of 16777216 more would "
               "exceed 20971520 (retry later)");
  EXPECT_EQ(server->stats().busy, 1u);
  EXPECT_LE(server->stats().reply_bytes, options.max_reply_bytes);
  holder.reset();  // the client goes; its reply's buffer with it, and room for the next
  ASSERT_TRUE(wait_until([&] { return server->stats().reply_bytes == 0; }));
  auto got = fetch_blob("127.0.0.1", server->port(), "", 5s, 32 * kMiB);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(got->size(), 16 * kMiB);
}

TEST(SideChannelAbuse, StartRejectsZeroBounds) {
  auto provider = blobs(items_provider());
  SideChannelOptions options;
  options.max_connections = 0;
  EXPECT_ERROR(SideChannelServer::start("127.0.0.1", 0, provider, options),
               ErrorCode::InvalidArgument, "max_connections 0");
  options = {};
  options.request_timeout = 0ms;
  EXPECT_ERROR(SideChannelServer::start("127.0.0.1", 0, provider, options),
               ErrorCode::InvalidArgument, "request_timeout 0 ms");
}

// --- Authentication: a keyed server serves only requests made with its key ---

constexpr std::string_view kSharedKey = "the shared key, 16+ bytes";

SideChannelOptions keyed(std::string_view key = kSharedKey) {
  SideChannelOptions options;
  options.auth_key = std::string(key);
  return options;
}

TEST(SideChannelAuth, MatchingKeysWork) {
  auto server = serve(items_provider(), "127.0.0.1", keyed());
  ASSERT_TRUE(server);
  auto got = fetch_blob("127.0.0.1", server->port(), "a", 2s, 64, kSharedKey);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, "item a");
  EXPECT_EQ(fetch_blob("127.0.0.1", server->port(), "", 2s, 64, kSharedKey).value(),
            "the metadata");
}

TEST(SideChannelAuth, UnkeyedOrWrongKeyedClientsAreRefused) {
  std::atomic<int> calls{0};
  auto server = serve(
      [&](const std::string&) -> Result<std::string> {
        ++calls;
        return std::string("secret");
      },
      "127.0.0.1", keyed());
  ASSERT_TRUE(server);
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), "", 2s, 64), ErrorCode::Remote,
               "authentication required: this agent serves only requests authenticated with "
               "its key");
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), "", 2s, 64, "not the key, 16+ bytes"),
               ErrorCode::Remote,
               "authentication failed: the request's MAC does not match this agent's key");
  EXPECT_EQ(calls.load(), 0);  // nothing was produced for them
}

TEST(SideChannelAuth, KeyedClientRefusesAnUnauthenticatedServer) {
  auto server = serve(items_provider());
  ASSERT_TRUE(server);
  EXPECT_ERROR(fetch_blob("127.0.0.1", server->port(), "a", 2s, 64, kSharedKey),
               ErrorCode::InvalidArgument, "the server sent item 'a' unauthenticated");
}

TEST(SideChannelAuth, ReplayedRequestIsRefused) {
  auto server = serve(items_provider(), "127.0.0.1", keyed());
  ASSERT_TRUE(server);
  const Nonce nonce{1, 2, 3};
  const std::string request = encode_request("a", kSharedKey, wall_clock_ns(), nonce);
  const std::string first = exchange(server->port(), request);
  ASSERT_GE(first.size(), kAuthReplyHeaderBytes);
  EXPECT_EQ(first.substr(0, 8), "KVBMMD02");
  EXPECT_EQ(first.substr(kAuthReplyHeaderBytes), "item a");
  EXPECT_EQ(error_text(exchange(server->port(), request)),
            "replayed request refused (its nonce was seen before)");
}

TEST(SideChannelAuth, StaleOrFutureRequestIsRefused) {
  auto server = serve(items_provider(), "127.0.0.1", keyed());
  ASSERT_TRUE(server);
  const uint64_t minute = 60'000'000'000;
  EXPECT_NE(error_text(exchange(server->port(), encode_request("a", kSharedKey,
                                                               wall_clock_ns() - minute, Nonce{4})))
                .find("request timestamp is -6"),
            std::string::npos);
  EXPECT_NE(error_text(exchange(server->port(), encode_request("a", kSharedKey,
                                                               wall_clock_ns() + minute, Nonce{5})))
                .find("s off this agent's clock (the window is +-30 s)"),
            std::string::npos);
}

TEST(SideChannelAuth, TamperedReplyIsRefused) {
  // A server that answers with a MAC it could not have made with the key.
  FakeServer fake("KVBMMD02" + le64(2) + std::string(32, 'm') + "ok");
  EXPECT_ERROR(fetch_blob("127.0.0.1", fake.port(), "", 2s, 64, kSharedKey),
               ErrorCode::InvalidArgument,
               "fails authentication: its MAC does not match this agent's key");
}

TEST(SideChannelAuth, ShortKeyIsRejected) {
  EXPECT_ERROR(SideChannelServer::start("127.0.0.1", 0, blobs(items_provider()), keyed("short")),
               ErrorCode::InvalidArgument, "auth key of 5 bytes; at least 16 are required");
}

// --- Agents with keys: who may fetch our metadata and items, and whose metadata we load ---

std::unique_ptr<Agent> bare_agent(const std::string& name, std::string key = {}) {
  AgentConfig config;
  config.backends = {};  // the side channel and metadata need no transport
  config.add_cuda_if_gpu = false;
  config.progress_thread = false;
  config.auth_key = std::move(key);
  auto agent = Agent::create(name, std::move(config));
  EXPECT_TRUE(agent.ok()) << agent.error().to_string();
  return agent ? std::move(*agent) : nullptr;
}

TEST(AgentAuth, AgentsWithTheSameKeyExchangeMetadataAndItems) {
  auto a = bare_agent("a", std::string(kSharedKey));
  auto b = bare_agent("b", std::string(kSharedKey));
  ASSERT_TRUE(a && b);
  const uint16_t port = a->listen("127.0.0.1", 0).value();
  ASSERT_TRUE(a->publish("blocks/7", "descriptor").ok());
  auto name = b->fetch_remote_metadata("127.0.0.1", port);
  ASSERT_TRUE(name.ok()) << name.error().to_string();
  EXPECT_EQ(*name, "a");
  EXPECT_EQ(b->fetch_published("127.0.0.1", port, "blocks/7").value(), "descriptor");
  EXPECT_EQ(b->load_remote_metadata(a->local_metadata().value()).value(), "a");
}

TEST(AgentAuth, KeyedAgentRefusesUnkeyedAndWrongKeyedPeers) {
  auto a = bare_agent("a", std::string(kSharedKey));
  auto plain = bare_agent("plain");
  auto other = bare_agent("other", "a different key, 16+");
  ASSERT_TRUE(a && plain && other);
  const uint16_t port = a->listen("127.0.0.1", 0).value();
  ASSERT_TRUE(a->publish("blocks/7", "descriptor").ok());
  EXPECT_ERROR(plain->fetch_remote_metadata("127.0.0.1", port), ErrorCode::Remote,
               "authentication required");
  EXPECT_ERROR(plain->fetch_published("127.0.0.1", port, "blocks/7"), ErrorCode::Remote,
               "authentication required");
  EXPECT_ERROR(other->fetch_remote_metadata("127.0.0.1", port), ErrorCode::Remote,
               "authentication failed");
  EXPECT_FALSE(plain->has_remote("a"));
  // Nor does the keyed agent load metadata that is not sealed with its key.
  EXPECT_ERROR(a->load_remote_metadata(plain->local_metadata().value()), ErrorCode::InvalidArgument,
               "metadata is not authenticated");
  EXPECT_ERROR(a->load_remote_metadata(other->local_metadata().value()), ErrorCode::InvalidArgument,
               "metadata authentication failed");
  EXPECT_FALSE(a->has_remote("plain"));
}

TEST(AgentAuth, UnkeyedAgentsWorkAsBefore) {
  auto a = bare_agent("a");
  auto b = bare_agent("b");
  ASSERT_TRUE(a && b);
  const uint16_t port = a->listen("127.0.0.1", 0).value();
  EXPECT_EQ(b->fetch_remote_metadata("127.0.0.1", port).value(), "a");
  EXPECT_TRUE(b->has_remote("a"));
}

TEST(AgentMetadataIntegrity, CorruptedMetadataIsRefusedBeforeAnyBackendSeesIt) {
  // Real UCX agents: a flipped byte in a worker address or rkey once reached UCX.
  AgentConfig config;
  config.backends = {"UCX"};
  config.add_cuda_if_gpu = false;
  config.progress_thread = false;
  auto a = Agent::create("a", config);
  auto b = Agent::create("b", config);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<char> memory(4096);
  auto reg = (*a)->register_memory(DescList(
      MemType::Dram, {Desc{reinterpret_cast<uintptr_t>(memory.data()), memory.size(), 0}}));
  ASSERT_TRUE(reg.ok()) << reg.error().to_string();
  const std::string md = (*a)->local_metadata().value();
  for (size_t at : {size_t{20}, md.size() / 2, md.size() - 40}) {
    std::string corrupt = md;
    corrupt[at] = static_cast<char>(corrupt[at] ^ 0x10);
    EXPECT_ERROR((*b)->load_remote_metadata(corrupt), ErrorCode::InvalidArgument,
                 "metadata checksum mismatch");
  }
  EXPECT_FALSE((*b)->has_remote("a"));
  EXPECT_EQ((*b)->load_remote_metadata(md).value(), "a");
}

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(AgentAuth, KeyFromTheEnvironmentOrAFile) {
  {
    ScopedEnv env("KVBM_AUTH_KEY", std::string(kSharedKey));
    auto a = bare_agent("a");
    ASSERT_TRUE(a);
    EXPECT_TRUE(decode_metadata(a->local_metadata().value(), 1 << 20, kSharedKey).ok());
  }
  {
    testing::TempDir dir;
    const auto path = dir.path() / "key";
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fprintf(f, "%s\n", std::string(kSharedKey).c_str());  // the newline is not part of the key
    std::fclose(f);
    ScopedEnv env("KVBM_AUTH_KEY_FILE", path.string());
    auto a = bare_agent("a");
    ASSERT_TRUE(a);
    EXPECT_TRUE(decode_metadata(a->local_metadata().value(), 1 << 20, kSharedKey).ok());
  }
  ScopedEnv env("KVBM_AUTH_KEY", "short");
  AgentConfig config;
  config.backends = {};
  EXPECT_ERROR(Agent::create("a", config), ErrorCode::InvalidArgument,
               "auth key from KVBM_AUTH_KEY is 5 bytes; at least 16 are required");
}

TEST(SideChannel, Ipv6Loopback) {
  auto started = SideChannelServer::start(
      "::1", 0,
      blobs([](const std::string&) -> Result<std::string> { return std::string("six"); }));
  if (!started && started.code() == ErrorCode::Io) {
    GTEST_SKIP() << "no IPv6 loopback here: " << started.error().to_string();
  }
  ASSERT_TRUE(started.ok()) << started.error().to_string();
  auto got = fetch_blob("::1", (*started)->port(), "", 2s, 16);
  ASSERT_TRUE(got.ok()) << got.error().to_string();
  EXPECT_EQ(*got, "six");
  // Nobody listens on IPv4 at that port; errors bracket the IPv6 address.
  RawSocket holder;
  const uint16_t port = holder.bind_any();
  EXPECT_ERROR(fetch_blob("::1", port, "", 2s, 16), ErrorCode::Io, "[::1]:" + std::to_string(port));
}

}  // namespace
}  // namespace kvbm::xfer::detail
