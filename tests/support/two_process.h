// What the two-process agent tests share (tests/integration/*): the transports they run
// over, the agent_peer helper process, descriptor layouts, and one blocking transfer.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "kvbm/xfer/agent.h"
#include "support/child_process.h"

namespace kvbm::testing {

// The peer timeout: short, so a dead peer is noticed quickly, but sanitizer builds run
// slower and raise it (KVBM_TEST_PEER_TIMEOUT_MS, set by the tsan test preset).
std::chrono::milliseconds peer_timeout();

// UCX_TLS, and KVBM_UCX_SAME_HOST: on shared memory, the UCX backend maps the peer's
// memory files ("auto"), or uses CMA only ("cma"), or UCX alone ("off").
struct Transport {
  const char* name;
  const char* tls;
  const char* same_host = "auto";
  const char* copy_threads = nullptr;  // KVBM_UCX_COPY_THREADS; null: the default
  const char* rma = nullptr;           // KVBM_UCX_RMA; null: the default (auto)
};
// So test names read "…/shm" rather than a dump of the struct's bytes.
void PrintTo(const Transport& t, std::ostream* os);
// Sets this process's environment for `t` (before its agent is created).
void use_transport(const Transport& t);

// Starts tests/integration/agent_peer with `args` in `t`'s environment (and `env`) and
// reads its READY line; returns what follows "READY " (nullopt, with a test failure, if
// none).
std::optional<std::string> start_agent_peer(std::unique_ptr<ChildProcess>& process,
                                            const std::vector<std::string>& args,
                                            const Transport& t,
                                            std::map<std::string, std::string> env = {});

// (offset, length) ranges of the given sizes, from `shift` on, `gap` bytes apart.
std::vector<std::pair<size_t, size_t>> spaced_ranges(const std::vector<size_t>& sizes, size_t shift,
                                                     size_t gap);
// Descriptors of those ranges from `base` (device id `dev`: a file's fd, else 0).
xfer::DescList descs_at(xfer::MemType type, uint64_t base,
                        const std::vector<std::pair<size_t, size_t>>& ranges, uint64_t dev = 0);

// Creates, posts and waits for one request (up to 30 s).
Status transfer(xfer::Agent& agent, xfer::Op op, const xfer::DescList& local,
                const xfer::DescList& remote, const std::string& peer,
                std::optional<std::string> notification = std::nullopt);

}  // namespace kvbm::testing
