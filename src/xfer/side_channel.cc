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
#include <memory>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvbm/log.h"

namespace kvbm::xfer::detail {
namespace {

using Clock = std::chrono::steady_clock;

// Connections arriving faster than one wake-up accepts them wait here; a short queue
// would drop their SYNs and cost each a retransmission.
constexpr int kBacklog = 1024;
// New connections taken per wake-up, so that a flood of them cannot starve the others.
constexpr int kAcceptsPerRound = 64;

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

// One connection the server is still serving: first it reads the request into a fixed
// buffer, never past its end (so that closing later discards no unread bytes with a
// reset), then it writes the reply: a header, then the payload from its shared buffer.
struct Connection {
  Fd fd;
  Clock::time_point deadline;       // for the request, then for the reply
  Clock::time_point last_progress;  // accept, then the last bytes the client took

  char request[kMaxRequestBytes];
  size_t received = 0;
  bool replying = false;

  char header[kAuthReplyHeaderBytes];
  size_t header_len = 0;
  Blob payload;
  size_t sent = 0;  // of header + payload

  Connection(Fd f, Clock::time_point now, Clock::time_point d)
      : fd(std::move(f)), deadline(d), last_progress(now) {}
  size_t total() const { return header_len + payload->size(); }
};

// The distinct payloads connections hold, each counted once however many send it, with
// its SHA-256 once an authenticated reply needed it.
class ReplyBuffers {
 public:
  bool fits(const Blob& b, size_t limit) const {
    return held_.count(b.get()) != 0 || (b->size() <= limit && bytes_ <= limit - b->size());
  }
  void take(const Blob& b) {
    auto [it, fresh] = held_.try_emplace(b.get());
    if (fresh) bytes_ += b->size();
    ++it->second.refs;
  }
  void release(const Blob& b) {
    auto it = held_.find(b.get());
    if (it == held_.end() || --it->second.refs > 0) return;
    bytes_ -= b->size();
    held_.erase(it);
  }
  const Digest& digest(const Blob& b) {
    auto& h = held_.at(b.get());
    if (!h.digest) h.digest = sha256(*b);
    return *h.digest;
  }
  size_t bytes() const { return bytes_; }

 private:
  struct Held {
    size_t refs = 0;
    std::optional<Digest> digest;
  };
  std::unordered_map<const std::string*, Held> held_;
  size_t bytes_ = 0;
};

enum class Progress { Done, Pending, Failed };

}  // namespace

// The server thread's state: its connections and what their replies hold.
class ServeLoop {
 public:
  explicit ServeLoop(SideChannelServer& server)
      : s_(server), opts_(server.options_), auth_(opts_.auth_key, opts_.auth_window) {}
  ~ServeLoop() {
    while (!conns_.empty()) drop(conns_.size() - 1, nullptr);
  }
  void run();

 private:
  Progress advance(Connection& c);
  Progress read_request(Connection& c);
  void answer(Connection& c);
  void reply(Connection& c, Blob payload, const Nonce* nonce);
  void reply_error(Connection& c, std::string text);
  Progress send_some(Connection& c);
  void accept_some();
  void evict_one();
  void drop(size_t i, const char* why);
  void publish_stats();

  SideChannelServer& s_;
  const SideChannelOptions& opts_;
  RequestAuthenticator auth_;
  std::vector<Connection> conns_;
  ReplyBuffers buffers_;
  Clock::time_point listen_paused_until_{};
};

void ServeLoop::reply(Connection& c, Blob payload, const Nonce* nonce) {
  c.replying = true;
  c.deadline = Clock::now() + opts_.reply_timeout;
  buffers_.take(payload);
  std::memcpy(c.header, nonce ? kAuthReplyMagic : kPlainReplyMagic, 8);
  put_le64(c.header + 8, payload->size());
  c.header_len = kReplyHeaderBytes;
  if (nonce) {
    const Digest mac = reply_mac(auth_.key(), *nonce, payload->size(), buffers_.digest(payload));
    std::memcpy(c.header + kReplyHeaderBytes, mac.data(), mac.size());
    c.header_len = kAuthReplyHeaderBytes;
  }
  c.payload = std::move(payload);
}

void ServeLoop::reply_error(Connection& c, std::string text) {
  if (text.size() > kMaxErrorBytes) text.resize(kMaxErrorBytes);
  reply(c, std::make_shared<const std::string>(std::move(text)), nullptr);
  std::memcpy(c.header, kErrorMagic, 8);
}

// The reply to a complete request: the provider's bytes for its key, or why not.
void ServeLoop::answer(Connection& c) {
  auto request = decode_request(std::string_view(c.request, c.received));
  if (!request) return reply_error(c, "bad request: " + request.error().message);
  if (!opts_.auth_key.empty()) {
    if (auto ok = auth_.admit(*request, wall_clock_ns()); !ok)
      return reply_error(c, ok.error().message);
  }
  // A provider that throws must not take the thread (and the process) down.
  std::string text;
  try {
    Result<Blob> blob = s_.provider_(request->key);
    if (blob && *blob == nullptr) blob = err(ErrorCode::Internal, "provider gave no bytes");
    if (blob && !buffers_.fits(*blob, opts_.max_reply_bytes)) {
      s_.busy_.fetch_add(1, std::memory_order_relaxed);
      return reply_error(c, "busy: " + std::to_string(buffers_.bytes()) +
                                " bytes of replies are being sent; a reply of " +
                                std::to_string((*blob)->size()) + " more would exceed " +
                                std::to_string(opts_.max_reply_bytes) + " (retry later)");
    }
    if (blob) return reply(c, std::move(*blob), opts_.auth_key.empty() ? nullptr : &request->nonce);
    text = blob.error().to_string();
  } catch (const std::exception& e) {
    text = std::string("provider threw: ") + e.what();
  } catch (...) {
    text = "provider threw";
  }
  reply_error(c, std::move(text));
}

// Reads what is still missing of the request. Done: it is complete (or malformed, and
// the connection answers why).
Progress ServeLoop::read_request(Connection& c) {
  for (;;) {
    auto want = request_size(std::string_view(c.request, c.received));
    if (!want) {
      reply_error(c, "bad request: " + want.error().message);
      return Progress::Done;
    }
    if (c.received == *want) return Progress::Done;
    const ssize_t n = ::recv(c.fd.get(), c.request + c.received, *want - c.received, 0);
    if (n > 0) {
      c.received += static_cast<size_t>(n);
    } else if (n == 0) {  // half-closed: the client may still read why
      reply_error(c, "bad request: request ended after " + std::to_string(c.received) + " of " +
                         std::to_string(*want) + " bytes");
      return Progress::Done;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Progress::Pending;
    } else {
      return Progress::Failed;  // reset: nobody to answer
    }
  }
}

Progress ServeLoop::send_some(Connection& c) {
  while (c.sent < c.total()) {
    iovec iov[2];
    int n_iov = 0;
    if (c.sent < c.header_len) {
      iov[n_iov++] = {c.header + c.sent, c.header_len - c.sent};
      iov[n_iov++] = {const_cast<char*>(c.payload->data()), c.payload->size()};
    } else {
      const size_t off = c.sent - c.header_len;
      iov[n_iov++] = {const_cast<char*>(c.payload->data()) + off, c.payload->size() - off};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(n_iov);
    const ssize_t n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL);
    if (n > 0) {
      c.sent += static_cast<size_t>(n);
      c.last_progress = Clock::now();
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return Progress::Pending;
    } else {
      return Progress::Failed;  // the peer went away (EPIPE, ECONNRESET): nothing to do
    }
  }
  return Progress::Done;
}

// Moves a connection on as far as it goes without blocking: reads the request, answers
// it, sends the reply. Done or Failed: the connection is finished with.
Progress ServeLoop::advance(Connection& c) {
  if (!c.replying) {
    const Progress p = read_request(c);
    if (p != Progress::Done) return p;
    if (!c.replying) answer(c);
  }
  return send_some(c);
}

void ServeLoop::drop(size_t i, const char* why) {
  Connection& c = conns_[i];
  if (why != nullptr) {
    log(LogLevel::Debug,
        std::string("side channel: dropped a client ") + why + " (" +
            (c.replying ? "it read " + std::to_string(c.sent) + " of " + std::to_string(c.total()) +
                              " reply bytes"
                        : "it sent " + std::to_string(c.received) + " request bytes") +
            ")");
  }
  if (c.payload) buffers_.release(c.payload);
  if (i + 1 != conns_.size()) conns_[i] = std::move(conns_.back());
  conns_.pop_back();
}

// Makes room for a new connection: the one waiting longest for its request goes first; if
// all are replying, the one whose client took bytes least recently.
void ServeLoop::evict_one() {
  size_t victim = conns_.size();
  for (size_t i = 0; i < conns_.size(); ++i) {
    const Connection& c = conns_[i];
    if (victim == conns_.size()) {
      victim = i;
      continue;
    }
    const Connection& v = conns_[victim];
    const bool better = c.replying != v.replying ? !c.replying
                                                 : (c.replying ? c.last_progress < v.last_progress
                                                               : c.deadline < v.deadline);
    if (better) victim = i;
  }
  if (victim == conns_.size()) return;
  s_.evicted_.fetch_add(1, std::memory_order_relaxed);
  drop(victim, "to make room for a new connection");
}

void ServeLoop::accept_some() {
  for (int k = 0; k < kAcceptsPerRound; ++k) {
    Fd fd(::accept4(s_.listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      const int e = errno;
      if (e == EINTR || e == ECONNABORTED) continue;
      if (e != EAGAIN && e != EWOULDBLOCK) {
        // Out of descriptors leaves the listen socket readable: pause it rather than spin.
        log(LogLevel::Warn, "side channel: accept: " + errno_text(e));
        listen_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
      }
      return;
    }
    if (conns_.size() >= opts_.max_connections) evict_one();
    const auto now = Clock::now();
    conns_.emplace_back(std::move(fd), now, now + opts_.request_timeout);
    // The request may be in already, and most replies fit in the socket buffer at once;
    // only the rest wait for poll().
    if (advance(conns_.back()) != Progress::Pending) drop(conns_.size() - 1, nullptr);
  }
}

void ServeLoop::publish_stats() {
  size_t replying = 0;
  for (const auto& c : conns_) replying += c.replying ? 1 : 0;
  s_.connections_.store(conns_.size(), std::memory_order_relaxed);
  s_.replying_.store(replying, std::memory_order_relaxed);
  s_.reply_bytes_.store(buffers_.bytes(), std::memory_order_relaxed);
}

void ServeLoop::run() {
  std::vector<pollfd> fds;
  for (;;) {
    publish_stats();
    const auto now = Clock::now();
    const bool listening = now >= listen_paused_until_;
    Clock::time_point wake_at = listening ? Clock::time_point::max() : listen_paused_until_;
    fds.clear();
    fds.push_back({s_.wake_fd_, POLLIN, 0});
    fds.push_back({listening ? s_.listen_fd_ : -1, POLLIN, 0});  // poll() skips a negative fd
    for (const auto& c : conns_) {
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

    // Backwards, so that dropping one (the last moves into its place) leaves the poll
    // entries of those still to visit where they were.
    const auto after_poll = Clock::now();
    for (size_t i = conns_.size(); i-- > 0;) {
      Progress p = Progress::Pending;
      if (fds[2 + i].revents != 0) p = advance(conns_[i]);
      if (p == Progress::Pending && after_poll >= conns_[i].deadline) {
        s_.timed_out_.fetch_add(1, std::memory_order_relaxed);
        drop(i, "at its deadline");
      } else if (p != Progress::Pending) {
        drop(i, nullptr);
      }
    }
    if (listening && (fds[1].revents & POLLIN) != 0) accept_some();
  }
}

namespace {

// A listening, nonblocking socket on the first address of `host` that takes one: its fd;
// InvalidArgument for a host that does not resolve, Io naming the last failure otherwise.
Result<int> listen_socket(const std::string& host, uint16_t port, const std::string& where) {
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
    return fd.release();
  }
  return err(ErrorCode::Io, "side channel ", where, ": cannot listen: ", last_error);
}

}  // namespace

Result<std::unique_ptr<SideChannelServer>> SideChannelServer::start(const std::string& host,
                                                                    uint16_t port,
                                                                    Provider provider,
                                                                    SideChannelOptions options) {
  const std::string where = endpoint(host, port);
  if (!provider) return err(ErrorCode::InvalidArgument, "side channel ", where, ": no provider");
  if (host.empty())
    return err(ErrorCode::InvalidArgument, "side channel: empty host (port ", port, ")");
  if (options.request_timeout.count() <= 0 || options.reply_timeout.count() <= 0 ||
      options.max_connections == 0 || options.auth_window.count() <= 0) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": request_timeout ",
               options.request_timeout.count(), " ms, reply_timeout ",
               options.reply_timeout.count(), " ms, max_connections ", options.max_connections,
               " and auth_window ", options.auth_window.count(), " s must all be > 0");
  }
  if (!options.auth_key.empty() && options.auth_key.size() < kMinAuthKeyBytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": auth key of ",
               options.auth_key.size(), " bytes; at least ", kMinAuthKeyBytes, " are required");
  }

  auto listen_fd = listen_socket(host, port, where);
  if (!listen_fd) return listen_fd.error();
  // Not make_unique: the constructor is private. From here on the server's destructor
  // releases whatever has been acquired if a later step fails.
  std::unique_ptr<SideChannelServer> server(new SideChannelServer());
  server->listen_fd_ = *listen_fd;

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
  server->options_ = std::move(options);
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
  ServeLoop loop(*this);
  loop.run();
}

SideChannelStats SideChannelServer::stats() const {
  SideChannelStats st;
  st.connections = connections_.load(std::memory_order_relaxed);
  st.replying = replying_.load(std::memory_order_relaxed);
  st.reply_bytes = reply_bytes_.load(std::memory_order_relaxed);
  st.timed_out = timed_out_.load(std::memory_order_relaxed);
  st.evicted = evicted_.load(std::memory_order_relaxed);
  st.busy = busy_.load(std::memory_order_relaxed);
  return st;
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

// Connects to host:port, trying each address in turn (localhost may be ::1 and 127.0.0.1),
// all within the deadline.
Result<Fd> connect_by(const std::string& host, uint16_t port, Clock::time_point deadline,
                      std::chrono::milliseconds timeout, const std::string& where) {
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
  std::string last_error = "no address";
  for (addrinfo* ai = addrs.list; ai != nullptr; ai = ai->ai_next) {
    Fd s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!s) {
      last_error = "socket: " + errno_text(errno);
      continue;
    }
    if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) == 0) return s;
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
    return s;
  }
  return err(ErrorCode::Io, "side channel ", where, ": connect: ", last_error);
}

// One exchange's reading side: where from, by when, and (authenticated) with what.
struct ReplyReader {
  int fd;
  Clock::time_point deadline;
  std::chrono::milliseconds timeout;
  const std::string& where;
  std::string_view auth_key;
  const Nonce& nonce;

  Result<size_t> read(char* buf, size_t len, const char* what) const {
    return read_some(fd, buf, len, deadline, timeout, where, what);
  }
  Result<std::string> payload(uint64_t len) const;
  Result<std::string> error_text(uint64_t len, const std::string& what) const;
  Result<std::string> reply(size_t max_bytes, const std::string& what) const;
};

Result<std::string> ReplyReader::payload(uint64_t len) const {
  // Sized for up to 16 MiB at once, then doubled as bytes arrive, so a peer that declares
  // much more than it sends cannot make us allocate it.
  std::string out;
  size_t have = 0;
  while (have < len) {
    const size_t want = std::min<uint64_t>(len, std::max<size_t>(have * 2, size_t{16} << 20));
    out.resize(want);
    auto n = read(out.data() + have, want - have, "payload");
    KVBM_TRY(n);
    have += *n;
    if (have < want) {
      return err(ErrorCode::InvalidArgument, "side channel ", where, ": connection closed after ",
                 have, " of ", len, " payload bytes");
    }
  }
  return out;
}

Result<std::string> ReplyReader::error_text(uint64_t len, const std::string& what) const {
  if (len > kMaxErrorBytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": error text of ", len,
               " bytes exceeds ", kMaxErrorBytes);
  }
  std::string text(len, '\0');
  auto n = read(text.data(), len, "error text");
  KVBM_TRY(n);
  text.resize(*n);
  return err(ErrorCode::Remote, "side channel ", where, ": the server could not provide ", what,
             ": ", printable(text));
}

Result<std::string> ReplyReader::reply(size_t max_bytes, const std::string& what) const {
  char header[kAuthReplyHeaderBytes];
  auto got = read(header, kReplyHeaderBytes, "header");
  KVBM_TRY(got);
  if (*got < kReplyHeaderBytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": connection closed after ",
               *got, " of ", kReplyHeaderBytes, " header bytes");
  }
  const uint64_t len = get_le64(header + 8);
  if (std::memcmp(header, kErrorMagic, 8) == 0) return error_text(len, what);
  const bool plain = std::memcmp(header, kPlainReplyMagic, 8) == 0;
  const bool authenticated = std::memcmp(header, kAuthReplyMagic, 8) == 0;
  if (plain && !auth_key.empty()) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": the server sent ", what,
               " unauthenticated; this agent has an auth key and accepts only replies made with "
               "it (is the server configured with the key?)");
  }
  if (!(plain || (authenticated && !auth_key.empty()))) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": wrong magic '",
               printable(std::string_view(header, 8)), "' (expected '",
               auth_key.empty() ? "KVBMMD01" : "KVBMMD02", "')");
  }
  if (len > max_bytes) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": declared length ", len,
               " exceeds max_bytes ", max_bytes);
  }
  if (authenticated) {
    auto n = read(header + kReplyHeaderBytes, sizeof(Digest), "reply MAC");
    KVBM_TRY(n);
    if (*n < sizeof(Digest)) {
      return err(ErrorCode::InvalidArgument, "side channel ", where, ": connection closed after ",
                 kReplyHeaderBytes + *n, " of ", kAuthReplyHeaderBytes, " header bytes");
    }
  }
  auto body = payload(len);
  if (!body || !authenticated) return body;
  const Digest mac = reply_mac(auth_key, nonce, len, sha256(*body));
  if (!digests_equal(mac.data(), reinterpret_cast<const uint8_t*>(header + kReplyHeaderBytes))) {
    return err(ErrorCode::InvalidArgument, "side channel ", where, ": the reply with ", what,
               " fails authentication: its MAC does not match this agent's key");
  }
  return body;
}

}  // namespace

Result<std::string> fetch_blob(const std::string& host, uint16_t port, std::string_view key,
                               std::chrono::milliseconds timeout, size_t max_bytes,
                               std::string_view auth_key) {
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
  Nonce nonce{};
  if (!auth_key.empty()) KVBM_TRY(random_bytes(nonce.data(), nonce.size()));

  auto fd = connect_by(host, port, deadline, timeout, where);
  if (!fd) return fd.error();
  const std::string request = encode_request(key, auth_key, wall_clock_ns(), nonce);
  KVBM_TRY(write_all(fd->get(), request, deadline, timeout, where));
  const ReplyReader reader{fd->get(), deadline, timeout, where, auth_key, nonce};
  return reader.reply(max_bytes, what);
}

}  // namespace kvbm::xfer::detail
