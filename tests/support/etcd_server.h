// A real etcd server for tests: Debian's etcd-server started on 127.0.0.1 with a fresh data
// dir and free ports, stopped (and its data removed) on destruction. Tests that need one
// skip when the etcd binary is missing (scripts/install-deps installs it).
#pragma once

#include <memory>
#include <string>

#include "support/child_process.h"
#include "support/test_support.h"

namespace kvbm::testing {

class EtcdServer {
 public:
  // Where etcd is, or empty if it is not installed.
  static std::string binary();
  // Listening on `host` (an address of this host: another namespace reaches it through
  // a veth's address).
  explicit EtcdServer(std::string host = "127.0.0.1");
  ~EtcdServer();
  // True once it answers on its client URL.
  bool ready() const { return ready_; }
  const std::string& endpoint() const { return endpoint_; }  // http://host:port
  void kill();     // SIGKILL (the data dir stays, so restart() brings the same data back)
  bool restart();  // starts it again on the same ports and data dir; ready() after

 private:
  bool start();
  TempDir dir_;
  std::string host_;
  int client_port_ = 0;
  int peer_port_ = 0;
  std::string endpoint_;
  std::unique_ptr<ChildProcess> process_;
  bool ready_ = false;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int free_tcp_port();

}  // namespace kvbm::testing

// Skips the current test when Debian's etcd is not installed.
#define KVBM_REQUIRE_ETCD()                                                 \
  do {                                                                      \
    if (::kvbm::testing::EtcdServer::binary().empty())                      \
      GTEST_SKIP() << "etcd is not installed (Debian package etcd-server)"; \
  } while (0)
