#include "support/etcd_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "xfer/etcd_client.h"

namespace kvbm::testing {

int free_tcp_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

namespace {

// Whether something accepts TCP connections on host:port.
bool accepting(const std::string& host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    close(fd);
    return false;
  }
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

}  // namespace

std::string EtcdServer::binary() {
  for (const char* p : {"/usr/bin/etcd", "/usr/local/bin/etcd"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return {};
}

EtcdServer::EtcdServer(std::string host) : host_(std::move(host)) {
  client_port_ = free_tcp_port();
  peer_port_ = free_tcp_port();
  endpoint_ = "http://" + host_ + ":" + std::to_string(client_port_);
  start();
}

EtcdServer::~EtcdServer() {
  kill();
}

bool EtcdServer::start() {
  const std::string bin = binary();
  if (bin.empty() || client_port_ == 0 || peer_port_ == 0) return false;
  const std::string peer = "http://" + host_ + ":" + std::to_string(peer_port_);
  const std::string data = (dir_.path() / "data").string();
  process_ = std::make_unique<ChildProcess>(std::vector<std::string>{
      bin, "--name", "kvbm-test", "--data-dir", data, "--listen-client-urls", endpoint_,
      "--advertise-client-urls", endpoint_, "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer, "--initial-cluster", "kvbm-test=" + peer, "--logger",
      "zap", "--log-outputs", (dir_.path() / "etcd.log").string()});
  // Ready once it answers a read (it has elected itself leader), within 20 s.
  auto client = xfer::detail::EtcdClient::create({endpoint_}, std::chrono::seconds(2));
  for (int i = 0; i < 400 && process_->started() && client.ok(); ++i) {
    if (accepting(host_, client_port_) && (*client)->get("kvbm-test-ready").ok()) {
      ready_ = true;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void EtcdServer::kill() {
  ready_ = false;
  if (process_) {
    process_->kill_now();
    process_->wait(std::chrono::seconds(10));
    process_.reset();
  }
}

bool EtcdServer::restart() {
  kill();
  return start();
}

}  // namespace kvbm::testing
