#include "support/two_process.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string_view>

#include "support/test_support.h"

namespace kvbm::testing {

std::chrono::milliseconds peer_timeout() {
  const char* env = std::getenv("KVBM_TEST_PEER_TIMEOUT_MS");
  return std::chrono::milliseconds(env ? std::atol(env) : 3000);
}

void PrintTo(const Transport& t, std::ostream* os) {
  *os << t.name;
}

// TCP between processes of this host: through the loopback device alone, so that network
// devices other tests add and remove meanwhile (their namespaces' veths) carry nothing of
// ours.
namespace {
bool over_tcp(const Transport& t) {
  return std::string_view(t.tls).find("tcp") != std::string_view::npos;
}
}  // namespace

void use_transport(const Transport& t) {
  setenv("UCX_TLS", t.tls, 1);
  if (over_tcp(t)) {
    setenv("UCX_NET_DEVICES", "lo", 1);
  } else {
    unsetenv("UCX_NET_DEVICES");
  }
  setenv("KVBM_UCX_SAME_HOST", t.same_host, 1);
  if (t.copy_threads != nullptr) {
    setenv("KVBM_UCX_COPY_THREADS", t.copy_threads, 1);
  } else {
    unsetenv("KVBM_UCX_COPY_THREADS");
  }
  if (t.rma != nullptr) {
    setenv("KVBM_UCX_RMA", t.rma, 1);
  } else {
    unsetenv("KVBM_UCX_RMA");
  }
}

std::optional<std::string> start_agent_peer(std::unique_ptr<ChildProcess>& process,
                                            const std::vector<std::string>& args,
                                            const Transport& t,
                                            std::map<std::string, std::string> env) {
  std::vector<std::string> argv = {helper_path("agent_peer")};
  argv.insert(argv.end(), args.begin(), args.end());
  env["UCX_TLS"] = t.tls;
  if (over_tcp(t)) env.emplace("UCX_NET_DEVICES", "lo");
  env["KVBM_UCX_SAME_HOST"] = t.same_host;
  if (t.copy_threads != nullptr) env["KVBM_UCX_COPY_THREADS"] = t.copy_threads;
  if (t.rma != nullptr) env["KVBM_UCX_RMA"] = t.rma;
  process = std::make_unique<ChildProcess>(argv, std::move(env));
  auto ready = process->read_line();
  if (!ready || ready->rfind("READY ", 0) != 0) {
    ADD_FAILURE() << "peer did not start: " << ready.value_or("<nothing>");
    return std::nullopt;
  }
  return ready->substr(6);
}

std::vector<std::pair<size_t, size_t>> spaced_ranges(const std::vector<size_t>& sizes, size_t shift,
                                                     size_t gap) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t off = shift;
  for (size_t s : sizes) {
    out.emplace_back(off, s);
    off += s + gap;
  }
  return out;
}

xfer::DescList descs_at(xfer::MemType type, uint64_t base,
                        const std::vector<std::pair<size_t, size_t>>& ranges, uint64_t dev) {
  xfer::DescList d(type);
  for (auto [off, len] : ranges) d.add(base + off, len, dev);
  return d;
}

Status transfer(xfer::Agent& agent, xfer::Op op, const xfer::DescList& local,
                const xfer::DescList& remote, const std::string& peer,
                std::optional<std::string> notification) {
  auto req = agent.create_request(op, local, remote, peer, std::move(notification));
  if (!req) return req.error();
  KVBM_TRY((*req)->post());
  return (*req)->wait(std::chrono::seconds(30));
}

}  // namespace kvbm::testing
