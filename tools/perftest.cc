#include "perftest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "subprocess.h"

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// The last line of `out` with 8 numeric fields: iterations,p50_lat,avg_lat,overall_lat,
// avg_bw,overall_bw,avg_mr,overall_mr.
std::optional<PerftestResult> parse_result(const std::string& out, size_t size) {
  std::istringstream lines(out);
  std::optional<PerftestResult> result;
  for (std::string line; std::getline(lines, line);) {
    std::vector<double> f;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, ',');) {
      char* end = nullptr;
      double v = std::strtod(cell.c_str(), &end);
      if (end == cell.c_str()) break;
      f.push_back(v);
    }
    if (f.size() == 8 && f[3] > 0) {
      const double gbps = static_cast<double>(size) / (f[3] * 1e-6) / 1e9;
      result = PerftestResult{f[1], f[3], gbps};
    }
  }
  return result;
}

}  // namespace

uint16_t free_tcp_port(bool any_address) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(any_address ? INADDR_ANY : INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

Result<PerftestResult> run_perftest(const Perftest& p, const std::string& test, size_t size,
                                    size_t iters, std::vector<std::string> extra) {
  Subprocess::Options env;
  if (p.tls) env.env["UCX_TLS"] = *p.tls;
  env.quiet_stderr = true;
  const bool remote = !p.host.empty();
  Error last{ErrorCode::Internal, "not run"};
  // The client fails if it connects before the server listens (ours just started, or the
  // peer's restarting after the previous test): try a few times.
  for (int attempt = 0; attempt < 4; ++attempt) {
    const std::string port = std::to_string(remote ? p.port : free_tcp_port(false));
    std::optional<Subprocess> server;
    if (!remote) {
      auto s = spawn_child({p.exe, "-p", port}, env);
      if (!s) return s.error();
      server.emplace(std::move(*s));
    }
    if (!remote || attempt > 0) std::this_thread::sleep_for(150ms + 250ms * attempt);
    Subprocess::Options client_env = env;
    client_env.pipe_stdout = true;
    std::vector<std::string> argv = {p.exe, remote ? p.host : "127.0.0.1",
                                     "-p",  port,
                                     "-t",  test,
                                     "-s",  std::to_string(size),
                                     "-n",  std::to_string(iters),
                                     "-w",  std::to_string(std::max<size_t>(1, iters / 10)),
                                     "-f",  "-v"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto client = spawn_child(argv, client_env);
    if (!client) return client.error();
    auto out = client->read_all(std::chrono::seconds(120));
    if (!out) client->kill_now();
    auto rc = client->wait(std::chrono::seconds(5));
    if (server && !server->wait(std::chrono::seconds(2))) server->kill_now();
    if (!out) return out.error();
    if (!rc || *rc != 0) {
      last = err(ErrorCode::Io, "ucx_perftest -t ", test, " -s ", size,
                 remote ? " against " + p.host + ":" + port : std::string(), " exited with ",
                 rc ? std::to_string(*rc) : rc.error().to_string());
      continue;
    }
    auto result = parse_result(*out, size);
    if (!result) return err(ErrorCode::Io, "no result line in ucx_perftest output: ", *out);
    return *result;
  }
  return last;
}

Result<std::unique_ptr<PerftestServer>> PerftestServer::start(const std::string& program) {
  auto exe = find_program(program);
  if (!exe) return err(ErrorCode::NotFound, "--perftest: program '", program, "' not found");
  const uint16_t port = free_tcp_port(true);
  if (port == 0) return err(ErrorCode::Io, "--perftest: no free TCP port");
  std::unique_ptr<PerftestServer> s(new PerftestServer(*exe, port));
  s->thread_ = std::thread([p = s.get()] { p->serve(); });
  return s;
}

PerftestServer::~PerftestServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

// One server after another, each spawned (and so tied by its death signal) from this
// thread. A server stuck with a client that went away is ended after a while, longer than
// any test the bench runs.
void PerftestServer::serve() {
  Subprocess::Options options;
  options.quiet_stderr = true;
  while (!stop_) {
    auto server = spawn_child({exe_, "-p", std::to_string(port_)}, options);
    if (!server) {
      std::cerr << "kvbm serve: ucx_perftest: " << server.error().to_string() << "\n";
      return;
    }
    const auto started = Clock::now();
    while (!stop_ && !server->wait(100ms) && Clock::now() - started < 300s) {
    }
    server->kill_now();
    (void)server->wait(5s);
    // One that ended at once (its port not free yet, say) is not restarted in a busy loop.
    if (!stop_ && Clock::now() - started < 1s) std::this_thread::sleep_for(200ms);
  }
}

}  // namespace kvbm::tools
