// The metadata side channel over TCP (side_channel.h): a server thread that multiplexes
// its listen socket, an eventfd for shutdown and the connections it is still reading a
// request from or writing a reply to with poll(), and a client that bounds every step
// by one deadline.
#include "xfer/side_channel.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <system_error>
#include <utility>
#include <vector>

#include "kvbm/log.h"

namespace kvbm::xfer::detail {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kRequestMagic[8] = {'K', 'V', 'B', 'M', 'R', 'Q', '0', '1'};
constexpr char kMagic[8] = {'K', 'V', 'B', 'M', 'M', 'D', '0', '1'};
constexpr char kErrorMagic[8] = {'K', 'V', 'B', 'M', 'E', 'R', '0', '1'};
constexpr size_t kRequestHeaderBytes = 12;  // magic + little-endian uint32 key length
constexpr size_t kHeaderBytes = 16;         // magic + little-endian uint64 length
constexpr size_t kMaxErrorBytes = 4096;
// Each connection must be read from and written to within this; a peer that sends no
// request, or stops reading the reply, is dropped.
constexpr auto kServeDeadline = std::chrono::seconds(5);
// More pending connections wait in the listen backlog until a slot frees.
constexpr size_t kMaxConnections = 64;
constexpr int kBacklog = 128;

// Owns one file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(int e) {
  return std::strerror(e);
}

// "host:port", with IPv6 literals bracketed.
std::string endpoint(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

// Bytes from the peer, fit for an error message.
std::string printable(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f) {
      out += ch;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

void put_le64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_le32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t get_le32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

uint64_t get_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// Milliseconds until `deadline` for poll(), rounded up so that a poll never returns
// early only to spin; 0 once it has passed; -1 (forever) for Clock::time_point::max().
int poll_ms(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return -1;
  const auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

// Waits for `events` on fd until the deadline: >0 ready, 0 timed out, <0 error (errno).
int wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int ms = poll_ms(deadline);
    if (ms == 0) return 0;
    const int n = ::poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) continue;  // woken a hair early; poll_ms decides whether time is up
    return n;
  }
}

struct Addresses {
  addrinfo* list = nullptr;
  ~Addresses() {
    if (list) ::freeaddrinfo(list);
  }
};

// One connection the server is still serving: first it reads the request (a 12-byte
// header, then the key) into a fixed buffer, then it writes the reply: a 16-byte header,
// then the payload (sent from where the provider put it, with no copy into one frame).
struct Connection {
  Fd fd;
  Clock::time_point deadline;  // for request and reply together

  char request[kRequestHeaderBytes + kMaxKeyBytes];
  size_t received = 0;  // of the request
  bool replying = false;

  char header[kHeaderBytes];
  std::string payload;
  size_t sent = 0;  // of header + payload

  Connection(Fd f, Clock::time_point d) : fd(std::move(f)), deadline(d) {}

  // The request's length once its header is in (the header alone until then).
  size_t request_total() const {
    if (received < kRequestHeaderBytes) return kRequestHeaderBytes;
    return kRequestHeaderBytes + get_le32(request + 8);
  }
  std::string key() const {
    return std::string(request + kRequestHeaderBytes, received - kRequestHeaderBytes);
  }
  void reply(const char (&magic)[8], std::string p) {
    replying = true;
    payload = std::move(p);
    std::memcpy(header, magic, 8);
    put_le64(header + 8, payload.size());
  }
  size_t total() const { return kHeaderBytes + payload.size(); }
};

enum class ReadState { Complete, Pending, Malformed, Failed };

// Reads what is still missing of the request, never past its end (so that closing the
// connection later does not discard unread bytes with a reset). Malformed leaves the
// reason in `why`.
ReadState read_request(Connection& c, std::string& why) {
  for (;;) {
    const size_t want = c.request_total();
    if (c.received == want) return ReadState::Complete;
    const ssize_t n = ::recv(c.fd.get(), c.request + c.received, want - c.received, 0);
    if (n > 0) {
      c.received += static_cast<size_t>(n);
      if (c.received != kRequestHeaderBytes) continue;
      if (std::memcmp(c.request, kRequestMagic, 8) != 0) {
        why = "wrong request magic '" + printable(std::string_view(c.request, 8)) +
              "' (expected 'KVBMRQ01')";
        return ReadState::Malformed;
      }
      if (const uint32_t len = get_le32(c.request + 8); len > kMaxKeyBytes) {
        why = "request key of " + std::to_string(len) + " bytes exceeds " +
              std::to_string(kMaxKeyBytes);
        return ReadState::Malformed;
      }
    } else if (n == 0) {
      why = "request ended after " + std::to_string(c.received) + " of " + std::to_string(want) +
            " bytes";
      return ReadState::Malformed;  // half-closed: the client may still read why
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return ReadState::Pending;
    } else {
      return ReadState::Failed;  // reset: nobody to answer
    }
  }
}

enum class SendState { Done, Pending, Failed };

SendState send_some(Connection& c) {
  while (c.sent < c.total()) {
    iovec iov[2];
    int n_iov = 0;
    if (c.sent < kHeaderBytes) {
      iov[n_iov++] = {c.header + c.sent, kHeaderBytes - c.sent};
      iov[n_iov++] = {c.payload.data(), c.payload.size()};
    } else {
      const size_t off = c.sent - kHeaderBytes;
      iov[n_iov++] = {c.payload.data() + off, c.payload.size() - off};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    const ssize_t n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL);
    if (n > 0) {
      c.sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return SendState::Pending;
    } else {
      return SendState::Failed;  // the peer went away (EPIPE, ECONNRESET): nothing to do
    }
  }
  return SendState::Done;
}

// The reply to a complete request: the provider's bytes for its key, or its error's text.
void answer(Connection& c, const SideChannelServer::Provider& provider) {
  // A provider that throws must not take the thread (and the process) down.
  std::string text;
  try {
    Result<std::string> blob = provider(c.key());
    if (blob) {
      c.reply(kMagic, std::move(*blob));
      return;
    }
    text = blob.error().to_string();
  } catch (const std::exception& e) {
    text = std::string("provider threw: ") + e.what();
  } catch (...) {
    text = "provider threw";
  }
  if (text.size() > kMaxErrorBytes) text.resize(kMaxErrorBytes);
  c.reply(kErrorMagic, std::move(text));
}

// Moves a connection on as far as it goes without blocking: reads the request, asks the
// provider, sends the reply. Done or Failed: the connection is finished with.
SendState advance(Connection& c, const SideChannelServer::Provider& provider) {
  if (!c.replying) {
    std::string why;
    switch (read_request(c, why)) {
      case ReadState::Pending:
        return SendState::Pending;
      case ReadState::Failed:
        return SendState::Failed;
      case ReadState::Malformed:
        c.reply(kErrorMagic, "bad request: " + why);
        break;
      case ReadState::Complete:
        answer(c, provider);
        break;
    }
  }
  return send_some(c);
}

}  // namespace

Result<std::unique_ptr<SideChannelServer>> SideChannelServer::start(const std::string& host,
                                                                    uint16_t port,
                                                                    Provider provider) {
  const std::string where = endpoint(host, port);
  if (!provider) return err(ErrorCode::InvalidArgument, "side channel ", where, ": no provider");
  if (host.empty())
    return err(ErrorCode::InvalidArgument, "side channel: empty host (port ", port, ")");

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  Addresses addrs;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &addrs.list); rc != 0) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": bad host '", host,
               "': ", ::gai_strerror(rc));
  }

  // Not make_unique: the constructor is private. From here on the server's destructor
  // releases whatever has been acquired if a later step fails.
  std::unique_ptr<SideChannelServer> server(new SideChannelServer());
  std::string last_error = "no address";
  for (addrinfo* ai = addrs.list; ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd) {
      last_error = "socket: " + errno_text(errno);
      continue;
    }
    // A restarted agent can rebind its port while old connections sit in TIME_WAIT.
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last_error = "bind: " + errno_text(errno);
      continue;
    }
    if (::listen(fd.get(), kBacklog) != 0) {
      last_error = "listen: " + errno_text(errno);
      continue;
    }
    server->listen_fd_ = fd.release();
    break;
  }
  if (server->listen_fd_ < 0) {
    return err(ErrorCode::Io, "side channel ", where, ": cannot listen: ", last_error);
  }

  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  if (::getsockname(server->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
    return err(ErrorCode::Io, "side channel ", where, ": getsockname: ", errno_text(errno));
  }
  server->port_ = bound.ss_family == AF_INET6
                      ? ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port)
                      : ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);

  server->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->wake_fd_ < 0) {
    return err(ErrorCode::Io, "side channel ", where, ": eventfd: ", errno_text(errno));
  }
  server->provider_ = std::move(provider);
  try {
    server->thread_ = std::thread(&SideChannelServer::serve, server.get());
  } catch (const std::system_error& e) {
    return err(ErrorCode::Internal, "side channel ", where, ": cannot start thread: ", e.what());
  }
  return server;
}

SideChannelServer::~SideChannelServer() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    // Cannot fail: the counter is far from overflow and the fd is ours.
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
    thread_.join();
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void SideChannelServer::serve() {
  std::vector<Connection> connections;  // closed (by Fd) on return
  std::vector<pollfd> fds;
  // accept() failing for want of descriptors leaves the listen socket readable; pausing
  // it for a moment keeps that from spinning.
  Clock::time_point listen_paused_until{};

  for (;;) {
    const auto now = Clock::now();
    Clock::time_point wake_at = Clock::time_point::max();
    const bool listening = connections.size() < kMaxConnections && now >= listen_paused_until;
    if (connections.size() < kMaxConnections && !listening) wake_at = listen_paused_until;
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listening ? listen_fd_ : -1, POLLIN, 0});  // poll() skips a negative fd
    for (const auto& c : connections) {
      fds.push_back({c.fd.get(), static_cast<short>(c.replying ? POLLOUT : POLLIN), 0});
      wake_at = std::min(wake_at, c.deadline);
    }
    const int n = ::poll(fds.data(), fds.size(), poll_ms(wake_at));
    if (n < 0) {
      if (errno == EINTR) continue;
      log(LogLevel::Error, "side channel: poll: " + errno_text(errno));
      return;
    }
    if (fds[0].revents != 0) return;  // the destructor asks us to stop

    // Backwards, so erasing one does not shift the poll entries of those still to visit.
    const auto after_poll = Clock::now();
    for (size_t i = connections.size(); i-- > 0;) {
      auto& c = connections[i];
      SendState state = SendState::Pending;
      if (fds[2 + i].revents != 0) state = advance(c, provider_);
      if (state == SendState::Pending && after_poll >= c.deadline) {
        if (c.replying) {
          log(LogLevel::Debug, "side channel: dropped a client that read " +
                                   std::to_string(c.sent) + " of " + std::to_string(c.total()) +
                                   " bytes in time");
        } else {
          log(LogLevel::Debug, "side channel: dropped a client that sent " +
                                   std::to_string(c.received) + " of " +
                                   std::to_string(c.request_total()) + " request bytes in time");
        }
        state = SendState::Failed;
      }
      if (state != SendState::Pending)
        connections.erase(connections.begin() + static_cast<long>(i));
    }

    if (!listening || (fds[1].revents & POLLIN) == 0) continue;
    while (connections.size() < kMaxConnections) {
      Fd fd(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!fd) {
        const int e = errno;
        if (e == EINTR || e == ECONNABORTED) continue;
        if (e != EAGAIN && e != EWOULDBLOCK) {
          log(LogLevel::Warn, "side channel: accept: " + errno_text(e));
          listen_paused_until = Clock::now() + std::chrono::milliseconds(100);
        }
        break;
      }
      connections.emplace_back(std::move(fd), Clock::now() + kServeDeadline);
      // The request may be in already, and most replies fit in the socket buffer at
      // once; only the rest wait for poll().
      if (advance(connections.back(), provider_) != SendState::Pending) connections.pop_back();
    }
  }
}

namespace {

// Reads up to `len` bytes by the deadline. Returns how many arrived before the peer
// closed (== len unless it closed early).
Result<size_t> read_some(int fd, char* buf, size_t len, Clock::time_point deadline,
                         std::chrono::milliseconds timeout, const std::string& where,
                         const char* what) {
  size_t got = 0;
  while (got < len) {
    const ssize_t n = ::recv(fd, buf + got, len - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) break;
    const int e = errno;
    if (e == EINTR) continue;
    if (e != EAGAIN && e != EWOULDBLOCK) {
      return err(ErrorCode::Io, "side channel ", where, ": reading the ", what, ": ",
                 errno_text(e));
    }
    const int ready = wait_for(fd, POLLIN, deadline);
    if (ready == 0) {
      return err(ErrorCode::Timeout, "side channel ", where, ": no complete reply within ",
                 timeout.count(), " ms (while reading the ", what, ")");
    }
    if (ready < 0) {
      return err(ErrorCode::Io, "side channel ", where, ": poll: ", errno_text(errno));
    }
  }
  return got;
}

// Writes all of `bytes` by the deadline.
Status write_all(int fd, std::string_view bytes, Clock::time_point deadline,
                 std::chrono::milliseconds timeout, const std::string& where) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n =
        ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    const int e = errno;
    if (n < 0 && e == EINTR) continue;
    if (n < 0 && e != EAGAIN && e != EWOULDBLOCK) {
      return err(ErrorCode::Io, "side channel ", where, ": sending the request: ", errno_text(e));
    }
    const int ready = wait_for(fd, POLLOUT, deadline);
    if (ready == 0) {
      return err(ErrorCode::Timeout, "side channel ", where, ": request not sent within ",
                 timeout.count(), " ms");
    }
    if (ready < 0) {
      return err(ErrorCode::Io, "side channel ", where, ": poll: ", errno_text(errno));
    }
  }
  return {};
}

}  // namespace

Result<std::string> fetch_blob(const std::string& host, uint16_t port, std::string_view key,
                               std::chrono::milliseconds timeout, size_t max_bytes) {
  const std::string where = endpoint(host, port);
  if (timeout.count() <= 0) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": timeout ", timeout.count(),
               " ms must be > 0");
  }
  if (key.size() > kMaxKeyBytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": key of ", key.size(),
               " bytes exceeds ", kMaxKeyBytes);
  }
  const std::string what = key.empty() ? "the metadata" : "item '" + printable(key) + "'";
  const auto deadline = Clock::now() + timeout;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  Addresses addrs;
  const std::string service = std::to_string(port);
  // Name resolution itself is not bounded by the deadline (getaddrinfo has no timeout).
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &addrs.list); rc != 0) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": cannot resolve '", host,
               "': ", ::gai_strerror(rc));
  }

  // Each address in turn (localhost may be ::1 and 127.0.0.1), all within the deadline.
  Fd fd;
  std::string last_error = "no address";
  for (addrinfo* ai = addrs.list; ai != nullptr && !fd; ai = ai->ai_next) {
    Fd s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!s) {
      last_error = "socket: " + errno_text(errno);
      continue;
    }
    if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) == 0) {
      fd = std::move(s);
      break;
    }
    if (errno != EINPROGRESS) {
      last_error = errno_text(errno);
      continue;
    }
    const int ready = wait_for(s.get(), POLLOUT, deadline);
    if (ready == 0) {
      return err(ErrorCode::Timeout, "side channel ", where, ": connect took over ",
                 timeout.count(), " ms");
    }
    if (ready < 0) {
      last_error = "poll: " + errno_text(errno);
      continue;
    }
    int so_error = 0;
    socklen_t so_len = sizeof so_error;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &so_error, &so_len) != 0) so_error = errno;
    if (so_error != 0) {
      last_error = errno_text(so_error);
      continue;
    }
    fd = std::move(s);
  }
  if (!fd) return err(ErrorCode::Io, "side channel ", where, ": connect: ", last_error);

  std::string request(kRequestHeaderBytes + key.size(), '\0');
  std::memcpy(request.data(), kRequestMagic, 8);
  put_le32(request.data() + 8, static_cast<uint32_t>(key.size()));
  std::memcpy(request.data() + kRequestHeaderBytes, key.data(), key.size());
  KVBM_TRY(write_all(fd.get(), request, deadline, timeout, where));

  char header[kHeaderBytes];
  auto got = read_some(fd.get(), header, kHeaderBytes, deadline, timeout, where, "header");
  KVBM_TRY(got);
  if (*got < kHeaderBytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": connection closed after ",
               *got, " of ", kHeaderBytes, " header bytes");
  }
  const uint64_t len = get_le64(header + 8);

  if (std::memcmp(header, kErrorMagic, 8) == 0) {
    if (len > kMaxErrorBytes) {
      return err(ErrorCode::InvalidArgument, "side channel ", where, ": error text of ", len,
                 " bytes exceeds ", kMaxErrorBytes);
    }
    std::string text(len, '\0');
    auto n = read_some(fd.get(), text.data(), len, deadline, timeout, where, "error text");
    KVBM_TRY(n);
    text.resize(*n);
    return err(ErrorCode::Remote, "side channel ", where, ": the server could not provide ", what,
               ": ", printable(text));
  }
  if (std::memcmp(header, kMagic, 8) != 0) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": wrong magic '",
               printable(std::string_view(header, 8)), "' (expected 'KVBMMD01')");
  }
  if (len > max_bytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": declared length ", len,
               " exceeds max_bytes ", max_bytes);
  }

  // Sized for up to 16 MiB at once, then doubled as bytes arrive, so a peer that declares
  // much more than it sends cannot make us allocate it.
  std::string payload;
  size_t have = 0;
  while (have < len) {
    const size_t want = std::min<uint64_t>(len, std::max<size_t>(have * 2, size_t{16} << 20));
    payload.resize(want);
    auto n = read_some(fd.get(), payload.data() + have, want - have, deadline, timeout, where,
                       "payload");
    KVBM_TRY(n);
    have += *n;
    if (have < want) {
      return err(ErrorCode::InvalidArgument, "side channel ", where, ": connection closed after ",
                 have, " of ", len, " payload bytes");
    }
  }
  return payload;
}

}  // namespace kvbm::xfer::detail
