// `kvbm serve` (serve.h): a target agent that peers on other hosts READ and WRITE.
#include "serve.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>

#include "cleanup.h"
#include "kvbm/remote/agent_registration.h"
#include "kvbm/remote/descriptor_exchange.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "options.h"
#include "perftest.h"
#include "report.h"
#include "table.h"

namespace kvbm::tools {
namespace {

// The bench's target: spins on progress() (or sleeps, with a progress thread) until stdin
// says quit or closes (the parent is gone).
int until_quit(xfer::Agent& agent, bool spin) {
  std::string input;
  for (;;) {
    if (spin) {
      for (int i = 0; i < 4096; ++i) agent.progress();
    }
    pollfd p{STDIN_FILENO, POLLIN, 0};
    if (poll(&p, 1, spin ? 0 : 100) <= 0) continue;
    char chunk[256];
    ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    input.append(chunk, static_cast<size_t>(n));
    if (input.find("quit\n") != std::string::npos) return 0;
  }
}

// `kvbm serve`: until SIGINT or SIGTERM (the flag of stop_on_signal, set beforehand).
int until_signal(xfer::Agent& agent, bool spin, const std::atomic<int>& stop) {
  while (stop.load() == 0) {
    if (spin) {
      for (int i = 0; i < 4096; ++i) agent.progress();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::cerr << "kvbm serve: signal " << stop.load() << ": stopping\n";
  return 0;
}

void print_summary(const ServeOptions& o, const std::string& host, std::optional<uint16_t> port,
                   bool etcd, const std::string& etcd_note, bool file, uint16_t perftest) {
  std::cout << "kvbm serve: agent '" << o.name << "' serves a " << human_bytes(o.bytes)
            << " buffer (item " << kServeBufferKey << ")";
  if (file)
    std::cout << " and a " << human_bytes(o.file_bytes) << " file (item " << kServeFileKey << ")";
  std::cout << "\n";
  if (port) {
    const bool any = host == "0.0.0.0" || host == "::";
    const std::string shown = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    std::cout << "  side channel: " << shown << ":" << *port
              << (any ? " (every address of this host)" : "") << "\n"
              << "  from another host: kvbm bench xfer --peer " << (any ? "<this host>" : shown)
              << ":" << *port << "\n";
  }
  if (etcd) {
    std::cout << "  etcd: " << etcd_note << "\n"
              << "  from another host: kvbm bench xfer --peer-etcd " << o.name
              << " (with the same --etcd and --etcd-prefix)\n";
  }
  if (perftest != 0) {
    std::cout << "  ucx_perftest: a server on port " << perftest << " (item " << kServePerftestKey
              << "), again after each test, for bench xfer --peer\n";
  }
  std::cout << "Stop it with Ctrl-C or SIGTERM." << std::endl;
}

// With --perftest: the ucx_perftest server, its port published; else null.
Result<std::unique_ptr<PerftestServer>> start_perftest(const ServeOptions& o, xfer::Agent& agent) {
  if (o.perftest.empty()) return std::unique_ptr<PerftestServer>();
  auto server = PerftestServer::start(o.perftest);
  if (!server) return server.error();
  KVBM_TRY(agent.publish(kServePerftestKey, std::to_string((*server)->port())));
  return server;
}

}  // namespace

Result<std::pair<std::string, uint16_t>> parse_host_port(std::string_view text,
                                                         bool allow_any_port) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close != std::string_view::npos && close + 1 < text.size() && text[close + 1] == ':') {
      host = text.substr(1, close - 1);
      port = text.substr(close + 2);
    }
  } else if (const size_t colon = text.rfind(':');
             colon != std::string_view::npos && text.find(':') == colon) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      value > 65535 || (value == 0 && !allow_any_port)) {
    return err(ErrorCode::InvalidArgument, "'", text, "' is not HOST:PORT (port 1..65535",
               allow_any_port ? ", or 0 for any" : "", "; IPv6 as [ADDRESS]:PORT)");
  }
  return std::pair<std::string, uint16_t>(std::string(host), static_cast<uint16_t>(value));
}

int run_serve(const ServeOptions& o) {
  // The bench's own target stays out of the user's etcd.
  if (o.bench_target) unsetenv("KVBM_ETCD_ENDPOINTS");
  xfer::AgentConfig config;
  config.progress_thread = !o.spin;
  config.etcd_endpoints = o.etcd;
  config.etcd_prefix = o.etcd_prefix;
  auto made = xfer::Agent::create(o.name, config);
  if (!made) return fail("serve", made.error());
  xfer::Agent& agent = **made;
  // Shareable: a peer on this same host maps it rather than going through UCX.
  auto buf = SystemAllocator(SystemMemory::Shareable).allocate(o.bytes);
  if (!buf) return fail("serve", buf.error());
  if (auto st = agent.register_storage(*buf); !st) return fail("serve", st.error());
  std::optional<DiskStorage> file;
  if (o.file_bytes > 0) {
    auto f = DiskAllocator(o.dir.empty() ? std::filesystem::temp_directory_path().string() : o.dir)
                 .allocate(o.file_bytes);
    if (!f) return fail("serve", f.error());
    // Served by fd: registering it unlinks its name, so a killed server leaves no file.
    file.emplace(std::move(*f));
    if (auto st = agent.register_storage(*file); !st) return fail("serve", st.error());
  }
  std::optional<uint16_t> port;
  std::string host;
  if (!o.listen.empty()) {
    auto hp = parse_host_port(o.listen, true);
    if (!hp) return fail("serve", hp.error());
    host = hp->first;
    auto p = agent.listen(host, hp->second);
    if (!p) return fail("serve", p.error());
    port = *p;
  }
  // With etcd, publish() also puts the items there, under this agent's lease.
  for (auto [key, storage] : {std::pair<const char*, RegisterableStorage*>{kServeBufferKey, &*buf},
                              {kServeFileKey, file ? &*file : nullptr}}) {
    if (storage == nullptr) continue;
    auto d = remote_descriptor_of(*storage);
    if (!d) return fail("serve", d.error());
    if (auto st = publish_descriptor(agent, key, *d); !st) return fail("serve", st.error());
  }
  bool etcd = false;
  std::string etcd_note = "published";
  if (auto st = agent.publish_metadata(); st || st.code() != ErrorCode::Unsupported) {
    etcd = true;
    // etcd down: the agent puts everything once etcd answers; peers wait for it meanwhile.
    if (!st) etcd_note = "not reachable yet (" + st.error().message + "); published once it is";
  }
  if (!port && !etcd) {
    return fail("serve",
                err(ErrorCode::InvalidArgument,
                    "nothing to serve on: --listen is empty and no etcd endpoints are set"));
  }
  auto perftest = start_perftest(o, agent);
  if (!perftest) return fail("serve", perftest.error());
  if (o.bench_target) {
    std::cout << "READY " << port.value_or(0) << " " << buf->addr();
    if (file) std::cout << " " << file->fd();
    std::cout << std::endl;
    return until_quit(agent, o.spin);
  }
  const std::atomic<int>& stop = stop_on_signal();
  print_summary(o, host, port, etcd, etcd_note, file.has_value(),
                *perftest ? (*perftest)->port() : 0);
  return until_signal(agent, o.spin, stop);
}

void add_serve(CLI::App& app, Runner& runner) {
  auto o = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve a registered host buffer (and file) to peers on other hosts, for `kvbm bench xfer "
      "--peer`; until Ctrl-C");
  cmd->add_option("--name", o->name, "The agent's name (what --peer-etcd names)")
      ->capture_default_str();
  cmd->add_option("--listen", o->listen,
                  "Side channel HOST:PORT (port 0: any free one; \"\": no side channel)")
      ->capture_default_str();
  cmd->add_option("--etcd", o->etcd,
                  "etcd endpoints, comma-separated (default: $KVBM_ETCD_ENDPOINTS, else none)")
      ->delimiter(',');
  cmd->add_option("--etcd-prefix", o->etcd_prefix,
                  "etcd key prefix (default: $KVBM_ETCD_PREFIX, else kvbm/)");
  add_size_option(*cmd, "--bytes", o->bytes, "The registered host buffer", 4096, size_t{1} << 40);
  add_size_option(*cmd, "--file", o->file_bytes,
                  "Also serve a registered file of this size (0: none)", 0, size_t{1} << 40);
  cmd->add_option("--dir", o->dir, "Where that file is made (default: the temp dir)")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--spin", o->spin,
                "Spin on progress() instead of a progress thread (lowest latency, one busy core)");
  auto perftest = std::make_shared<bool>(false);
  cmd->add_flag("--perftest", *perftest,
                "Also keep a ucx_perftest server listening (started again after each test) and "
                "publish its port, so that `kvbm bench xfer --peer` measures its ceiling too");
  cmd->add_option("--perftest-program", o->perftest, "The ucx_perftest program for --perftest")
      ->default_str("ucx_perftest");
  cmd->callback([o, perftest, &runner] {
    if (!*perftest) {
      o->perftest.clear();
    } else if (o->perftest.empty()) {
      o->perftest = "ucx_perftest";
    }
    runner = [o] { return run_serve(*o); };
  });
}

}  // namespace kvbm::tools
