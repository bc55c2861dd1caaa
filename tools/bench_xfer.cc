// `kvbm bench xfer`: the transfer agent between two processes on loopback, against
// ucx_perftest on the same transport; or, with --peer / --peer-etcd, against `kvbm serve`
// on another host (with --peer, against the ucx_perftest server of `kvbm serve --perftest`
// there: tools/perftest.h).
//
// The initiator (this process) polls (AgentConfig.progress_thread = false) for the
// lowest latency; our own target is this same binary re-executed as the hidden
// `kvbm bench xfer-target` (serve.h), spinning on progress() unless --target-thread (TCP's
// emulated RMA needs the target to progress). Either target publishes its buffer's (and
// file's) descriptor; metadata goes over the agent's TCP side channel, or through etcd.
//
// Bandwidth: requests of D descriptors of S bytes each, several requests in flight, the
// same buffers reused (as ucx_perftest does); each request ends with UCX's flush, so a
// request counts only once its data is complete at the target. Latency: post()+wait()
// of one small descriptor, median of many.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/pattern.h"
#include "demo_ceilings.h"
#include "kvbm/remote/descriptor_exchange.h"
#include "kvbm/storage.h"
#include "kvbm/version.h"
#include "kvbm/xfer/agent.h"
#include "loopback_env.h"
#include "options.h"
#include "perftest.h"
#include "report.h"
#include "serve.h"
#include "subprocess.h"
#include "table.h"
#include "timing.h"

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;
using xfer::Op;

struct XferOptions {
  std::vector<size_t> sizes = {4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20};
  std::vector<size_t> descs = {1, 16, 256, 1024};
  std::vector<size_t> lat_sizes = {8, 4 << 10};
  size_t iters = 0;  // requests per bandwidth point; 0: enough for ~256 MiB (shm)
  size_t lat_iters = 5000;
  // Bandwidth: the best of this many runs, ours and ucx_perftest's. A run moves 256 MiB, 7 ms
  // at 35 GB/s, and a slow time slice of a shared machine can spoil it: with the best of 2 a
  // 64 KiB row read 0.55 in one device run and 0.93-1.23 in the next four.
  size_t rounds = 3;
  size_t file_mib = 0;  // the peer's file section: its size (0: skipped)
  std::string dir;      // where the peer's file and the disk ceiling's file go
  std::vector<size_t> file_inflight = {16 << 20, 64 << 20};  // the peer's file: per row
  size_t inflight = 0;  // 0: enough requests for ~4 MiB in flight, 1..32
  size_t max_request = 64 << 20;
  std::string transport;  // shm, tcp or auto; empty: shm for our own target, auto with a peer
  std::string op = "both";
  std::string perftest = "ucx_perftest";
  bool target_thread = false;  // the target uses a progress thread instead of spinning
  // A served agent (`kvbm serve`) instead of our own target: its side channel HOST:PORT,
  // or its name in etcd (endpoints and prefix as the agent's config takes them).
  std::string peer;
  std::string peer_etcd;
  std::vector<std::string> etcd;
  std::string etcd_prefix;
  bool json = false;   // one JSON document on stdout instead of the tables
  bool check = false;  // exit 1 when a target against ucx_perftest is missed
};

// UCX_TLS for a transport; null: leave UCX_TLS as it is (UCX's choice).
const char* ucx_tls(const std::string& transport) {
  if (transport == "auto") return nullptr;
  return transport == "tcp" ? "tcp,self" : "sm,self";
}

double gbps(double bytes, double seconds) {
  return seconds > 0 ? bytes / seconds / 1e9 : 0;
}

// ---- our side ----------------------------------------------------------------------

struct Session {
  std::unique_ptr<xfer::Agent> agent;
  std::optional<SystemStorage> local;
  std::unique_ptr<xfer::MemoryRegistration> registration;  // of `local`
  std::string peer;
  uint64_t remote_addr = 0;
  size_t bytes = 0;
  std::optional<RemoteDescriptor> file;  // the peer's registered file, if it serves one
};

xfer::DescList descs_at(uint64_t base, size_t size, size_t count) {
  xfer::DescList list(xfer::MemType::Dram);
  list.descs.reserve(count);
  for (size_t i = 0; i < count; ++i) list.add(base + i * size, size);
  return list;
}

// Writes a pattern to the target and reads it back: the numbers below are for
// transfers that really move the bytes.
Status verify(Session& s) {
  const size_t n = std::min<size_t>(s.bytes, 1 << 20);
  auto* p = static_cast<uint8_t*>(s.local->data());
  detail::fill_pattern(p, n, 42);
  for (Op op : {Op::Write, Op::Read}) {
    if (op == Op::Read) std::memset(p, 0, n);
    auto req = s.agent->create_request(op, descs_at(s.local->addr(), n, 1),
                                       descs_at(s.remote_addr, n, 1), s.peer);
    if (!req) return req.error();
    auto& r = *req;
    KVBM_TRY(r->post());
    KVBM_TRY(r->wait(std::chrono::seconds(30)));
  }
  if (size_t bad = detail::find_pattern_mismatch(p, n, 42); bad != SIZE_MAX) {
    return err(ErrorCode::Internal, "verification failed: byte ", bad,
               " read back differs from what was written");
  }
  return {};
}

struct BwPoint {
  double gbps = 0;
  size_t iters = 0;
  size_t inflight = 0;
};

Result<BwPoint> measure_bandwidth(Session& s, Op op, size_t size, size_t count, size_t iters,
                                  size_t inflight) {
  std::vector<std::unique_ptr<xfer::Request>> reqs;
  for (size_t i = 0; i < inflight; ++i) {
    auto r = s.agent->create_request(op, descs_at(s.local->addr(), size, count),
                                     descs_at(s.remote_addr, size, count), s.peer);
    if (!r) return r.error();
    reqs.push_back(std::move(*r));
  }
  // One request at a time: post, and re-post each as it completes.
  auto run = [&](size_t total) -> Status {
    size_t posted = 0, done = 0;
    for (auto& r : reqs) {
      if (posted == total) break;
      KVBM_TRY(r->post());
      ++posted;
    }
    std::vector<bool> busy(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) busy[i] = i < posted;
    while (done < total) {
      for (size_t i = 0; i < reqs.size(); ++i) {
        if (!busy[i]) continue;
        switch (reqs[i]->state()) {
          case xfer::XferState::InProgress:
            continue;
          case xfer::XferState::Done:
            ++done;
            if (posted < total) {
              KVBM_TRY(reqs[i]->post());
              ++posted;
            } else {
              busy[i] = false;
            }
            break;
          default:
            return reqs[i]->error();
        }
      }
    }
    return {};
  };
  KVBM_TRY(run(std::min(iters, 2 * inflight)));  // warm-up: connections, caches
  const auto t0 = Clock::now();
  KVBM_TRY(run(iters));
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return BwPoint{gbps(static_cast<double>(iters) * size * count, secs), iters, inflight};
}

struct LatPoint {
  double p50_us = 0;
  double mean_us = 0;
};

constexpr size_t kLatBatch = 16;  // round trips per clock read

Result<LatPoint> measure_latency(Session& s, Op op, size_t size, size_t iters) {
  auto made = s.agent->create_request(op, descs_at(s.local->addr(), size, 1),
                                      descs_at(s.remote_addr, size, 1), s.peer);
  if (!made) return made.error();
  auto& req = *made;
  for (size_t i = 0; i < std::min<size_t>(iters, 200); ++i) {
    KVBM_TRY(req->post());
    KVBM_TRY(req->wait(std::chrono::seconds(10)));
  }
  std::vector<double> us;
  us.reserve(iters);
  double total = 0;
  // Timed in batches of kLatBatch round trips: a same-host round trip takes tens of ns,
  // and a clock read in a VM (kvm-clock) about as long, where ucx_perftest reads the TSC.
  const size_t batches = (iters + kLatBatch - 1) / kLatBatch;
  auto t0 = Clock::now();
  for (size_t b = 0; b < batches; ++b) {
    for (size_t i = 0; i < kLatBatch; ++i) {
      KVBM_TRY(req->post());
      KVBM_TRY(req->wait(std::chrono::seconds(10)));
    }
    const auto t1 = Clock::now();
    const double t = std::chrono::duration<double, std::micro>(t1 - t0).count();
    t0 = t1;
    us.push_back(t / kLatBatch);
    total += t;
  }
  iters = batches * kLatBatch;
  return LatPoint{median(std::move(us)), total / static_cast<double>(iters)};
}

std::string ratio(double ours, const std::optional<double>& theirs) {
  if (!theirs || *theirs <= 0) return "-";
  return fixed(ours / *theirs, 2);
}

// What the run prints: the tables as it goes, or (--json) one document at the end.
struct Report {
  bool json = false;
  nlohmann::ordered_json doc;
};

// Moves the peer's file `fd` (its first `bytes`) to or from `local` in requests of `size`,
// `inflight` at a time; GB/s.
Result<double> move_file(Session& s, Op op, uint64_t local, size_t bytes, int fd, size_t size,
                         size_t inflight) {
  std::vector<std::unique_ptr<xfer::Request>> reqs;
  for (size_t at = 0; at < bytes; at += size) {
    const size_t n = std::min(size, bytes - at);
    auto r = s.agent->create_request(
        op, xfer::DescList(xfer::MemType::Dram, {{local + at, n, 0}}),
        xfer::DescList(xfer::MemType::File, {{at, n, static_cast<uint64_t>(fd)}}), s.peer);
    if (!r) return r.error();
    reqs.push_back(std::move(*r));
  }
  const auto t0 = Clock::now();
  size_t next = 0;
  std::deque<xfer::Request*> running;
  while (next < reqs.size() || !running.empty()) {
    while (running.size() < inflight && next < reqs.size()) {
      KVBM_TRY(reqs[next]->post());
      running.push_back(reqs[next++].get());
    }
    KVBM_TRY(running.front()->wait(std::chrono::seconds(60)));
    running.pop_front();
  }
  return gbps(static_cast<double>(bytes), std::chrono::duration<double>(Clock::now() - t0).count());
}

// The peer's file (remote files, issue 6): READ and WRITE of the whole file the target
// registered, in requests of one descriptor, several in flight; the owner moves each
// chunk between its disk and a staging buffer. The ceiling is the disk: O_DIRECT
// pwrite/pread or io_uring on a file made the same way in the same directory, this run.
Status file_section(Session& s, const XferOptions& o, const std::vector<Op>& ops,
                    const std::filesystem::path& dir, Report& report) {
  const size_t bytes = o.file_mib << 20;
  const int fd = static_cast<int>(s.file->storage().device_id());
  if (bytes > s.file->size()) {
    return err(ErrorCode::InvalidArgument, "--file-mib ", o.file_mib,
               " exceeds the peer's file of ", s.file->size(), " bytes");
  }
  const std::vector<size_t>& depths = o.file_inflight;
  auto local = SystemAllocator().allocate(bytes);
  if (!local) return local.error();
  auto reg =
      s.agent->register_memory(xfer::DescList(xfer::MemType::Dram, {{local->addr(), bytes, 0}}));
  if (!reg) return reg.error();
  auto* p = static_cast<uint8_t*>(local->data());
  detail::fill_pattern(p, bytes, 77);
  auto run = [&](Op op, size_t size, size_t inflight) {
    return move_file(s, op, local->addr(), bytes, fd, size, inflight);
  };
  KVBM_TRY(run(Op::Write, size_t{4} << 20, 4));  // the file holds the pattern from here on
  auto ceilings = demo::disk_ceilings(dir, bytes, static_cast<int>(o.rounds));
  if (!ceilings) return ceilings.error();
  Table t({"op", "request", "in flight", "GB/s", "disk GB/s", "ratio", "disk ceiling"});
  for (Op op : ops) {
    const demo::Ceiling& c = op == Op::Write ? ceilings->write : ceilings->read;
    for (size_t size : {size_t{1} << 20, size_t{4} << 20}) {
      for (size_t depth : depths) {
        const size_t requests = (bytes + size - 1) / size;
        const size_t inflight = std::clamp<size_t>(depth / size, 1, std::min<size_t>(64, requests));
        double best = 0;
        for (size_t round = 0; round < o.rounds; ++round) {
          if (op == Op::Read) std::memset(p, 0, bytes);
          auto g = run(op, size, inflight);
          if (!g) return g.error();
          best = std::max(best, *g);
        }
        if (op == Op::Read) {
          if (size_t bad = detail::find_pattern_mismatch(p, bytes, 77); bad != SIZE_MAX) {
            return err(ErrorCode::Internal, "the peer's file read back differs at byte ", bad);
          }
        }
        t.add({xfer::to_string(op), human_bytes(size), std::to_string(inflight), fixed(best, 2),
               fixed(c.gbps, 2), fixed(best / c.gbps, 2), c.name});
        report.doc["file"]["rows"].push_back({{"op", xfer::to_string(op)},
                                              {"request_bytes", size},
                                              {"inflight", inflight},
                                              {"gbps", best},
                                              {"disk_gbps", c.gbps},
                                              {"ratio", best / c.gbps},
                                              {"disk_ceiling", c.name}});
      }
    }
  }
  report.doc["file"]["bytes"] = bytes;
  report.doc["file"]["disk_dir"] = dir.string();
  if (!report.json) {
    std::cout << "\nThe peer's file (" << human_bytes(bytes) << "), best of " << o.rounds
              << " runs, data verified; the disk ceiling is this host's, in " << dir.string()
              << "\n";
    t.print(std::cout);
  }
  return {};
}

// The other end: our own target process (`kvbm bench xfer-target`, serve.h) on loopback, or
// a served agent given by --peer / --peer-etcd. Either way its buffer (and file) come from
// the descriptors it publishes, and its metadata is loaded.
struct XferTarget {
  std::unique_ptr<Subprocess> process;  // ours; none with a peer
  std::string where;                    // for the header: "127.0.0.1:PORT", "etcd agent NAME"
};

Result<XferTarget> start_own_target(const XferOptions& o, size_t bytes,
                                    const std::filesystem::path& file_dir, uint16_t* port) {
  Subprocess::Options topt;
  topt.pipe_stdin = true;
  topt.pipe_stdout = true;
  std::vector<std::string> targv = {"/proc/self/exe", "bench", "xfer-target", "--bytes",
                                    std::to_string(bytes)};
  if (o.target_thread) targv.push_back("--progress-thread");
  if (o.file_mib > 0) {
    targv.insert(targv.end(), {"--file-mib", std::to_string(o.file_mib), "--dir", file_dir});
  }
  auto target = spawn_child(targv, topt);
  if (!target) return target.error();
  // UCX may log to stdout too (UCX_LOG_LEVEL): skip to our line.
  auto ready = target->read_line(std::chrono::seconds(30));
  while (ready && ready->rfind("READY ", 0) != 0) {
    std::cerr << "target: " << *ready << "\n";
    ready = target->read_line(std::chrono::seconds(30));
  }
  if (!ready) return ready.error();
  std::istringstream rl(*ready);
  std::string word;
  unsigned p = 0;
  if (!(rl >> word >> p) || p == 0 || p > 65535) {
    return err(ErrorCode::Remote, "target did not start: ", *ready);
  }
  *port = static_cast<uint16_t>(p);
  XferTarget t;
  t.process = std::make_unique<Subprocess>(std::move(*target));
  t.where = "pid " + std::to_string(t.process->pid()) + " at 127.0.0.1:" + std::to_string(p);
  return t;
}

// The served item `key` as a descriptor, from the side channel at host:port or from etcd.
Result<std::optional<RemoteDescriptor>> fetch_item(Session& s, const XferOptions& o,
                                                   const std::string& host, uint16_t port,
                                                   const char* key) {
  Result<RemoteDescriptor> d = err(ErrorCode::Internal, "not fetched");
  if (o.peer_etcd.empty()) {
    d = fetch_descriptor(*s.agent, host, port, key);
  } else {
    auto bytes = s.agent->fetch_published(o.peer_etcd, key);
    if (bytes) {
      d = RemoteDescriptor::from_bytes(*bytes);
    } else {
      d = bytes.error();
    }
  }
  // Remote (side channel) or NotFound (etcd): the peer does not serve this item.
  if (!d && (d.code() == ErrorCode::Remote || d.code() == ErrorCode::NotFound)) {
    return std::optional<RemoteDescriptor>();
  }
  if (!d) return d.error();
  return std::optional<RemoteDescriptor>(std::move(*d));
}

// Loads the peer's metadata and learns its buffer and file; the buffer must hold `bytes`.
Status load_peer(Session& s, const XferOptions& o, const std::string& host, uint16_t port) {
  if (!o.peer_etcd.empty()) {
    auto name = s.agent->fetch_remote_metadata(o.peer_etcd);
    if (!name) return name.error();
  }
  auto buffer = fetch_item(s, o, host, port, kServeBufferKey);
  if (!buffer) return buffer.error();
  if (!*buffer) {
    return err(ErrorCode::NotFound, "the peer publishes no item '", kServeBufferKey,
               "' (is it `kvbm serve`?)");
  }
  const RemoteDescriptor& d = **buffer;
  if (d.size() < s.bytes) {
    return err(ErrorCode::InvalidArgument, "the peer's buffer of ", d.size(),
               " bytes is smaller than the largest request here (", s.bytes,
               " bytes): serve a larger one (kvbm serve --bytes) or lower --sizes/--descs/"
               "--max-request/--lat-sizes");
  }
  if (d.storage().mem_type() != xfer::MemType::Dram) {
    return err(ErrorCode::InvalidArgument, "the peer's buffer is ",
               xfer::to_string(d.storage().mem_type()), " memory, not DRAM");
  }
  s.peer = d.agent_name();
  s.remote_addr = d.storage().addr();
  if (o.file_mib > 0) {
    auto file = fetch_item(s, o, host, port, kServeFileKey);
    if (!file) return file.error();
    if (!*file) {
      return err(ErrorCode::NotFound, "--file-mib ", o.file_mib,
                 ": the peer serves no file (kvbm serve --file SIZE)");
    }
    s.file = std::move(**file);
  }
  return {};
}

Result<XferTarget> open_target(Session& s, const XferOptions& o,
                               const std::filesystem::path& file_dir) {
  XferTarget t;
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  if (!o.peer.empty()) {
    auto hp = parse_host_port(o.peer, false);
    if (!hp) return err(ErrorCode::InvalidArgument, "--peer: ", hp.error().message);
    std::tie(host, port) = *hp;
    t.where = o.peer;
  } else if (!o.peer_etcd.empty()) {
    t.where = "etcd agent '" + o.peer_etcd + "'";
  } else {
    auto own = start_own_target(o, s.bytes, file_dir, &port);
    if (!own) return own.error();
    t = std::move(*own);
  }
  xfer::AgentConfig config;
  config.progress_thread = false;  // we poll: lowest latency
  config.etcd_endpoints = o.etcd;
  config.etcd_prefix = o.etcd_prefix;
  auto agent = xfer::Agent::create("kvbm-bench-initiator", config);
  if (!agent) return agent.error();
  s.agent = std::move(*agent);
  auto local = SystemAllocator(SystemMemory::Shareable).allocate(s.bytes);
  if (!local) return local.error();
  s.local = std::move(*local);
  auto reg = s.agent->register_memory(
      xfer::DescList(xfer::MemType::Dram, {{s.local->addr(), s.bytes, 0}}));
  if (!reg) return reg.error();
  s.registration = std::move(*reg);
  KVBM_TRY(load_peer(s, o, host, port));
  return t;
}

struct Point {
  size_t size, count;
};

nlohmann::ordered_json opt(const std::optional<double>& v) {
  return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
}

// One row of the bandwidth table, and of the JSON document's "bandwidth".
void add_bandwidth_row(Table& bw, Report& report, Op op, const Point& p, const BwPoint& r,
                       const std::optional<double>& theirs,
                       const std::optional<double>& theirs_request) {
  const size_t request = p.size * p.count;
  bw.add({xfer::to_string(op), human_bytes(p.size), std::to_string(p.count), human_bytes(request),
          std::to_string(r.inflight), std::to_string(r.iters), fixed(r.gbps, 2),
          theirs ? fixed(*theirs, 2) : "-", ratio(r.gbps, theirs),
          theirs_request ? fixed(*theirs_request, 2) : "-", ratio(r.gbps, theirs_request)});
  report.doc["bandwidth"].push_back(
      {{"op", xfer::to_string(op)},
       {"size", p.size},
       {"descs", p.count},
       {"request_bytes", request},
       {"inflight", r.inflight},
       {"requests", r.iters},
       {"gbps", r.gbps},
       {"perftest_gbps_size", opt(theirs)},
       {"perftest_gbps_request", opt(theirs_request)},
       {"ratio_request", theirs_request ? opt(r.gbps / *theirs_request) : opt({})}});
}

// The bandwidth rows, ours and (when `perftest`) ucx_perftest's, taking turns.
Status bandwidth_section(Session& s, const XferOptions& o, const std::vector<Op>& ops,
                         const std::vector<Point>& points, const std::optional<Perftest>& perftest,
                         Report& report) {
  const size_t point_bytes = o.transport == "shm" ? (size_t{256} << 20) : (size_t{64} << 20);
  // Two perftest figures per row: one message of the descriptor's size (the same buffer
  // reused, so cache-resident where ours, spread over `descs` buffers, is not), and one
  // message of the whole request's size (the same bytes and footprint per operation). The
  // target is judged on the second; for one descriptor they are the same.
  Table bw({"op", "size", "descs", "request", "in flight", "requests", "GB/s",
            "perftest GB/s (size)", "ratio", "perftest GB/s (request)", "ratio (request)"});
  // One ucx_perftest run; nullopt (and a line on stderr) when it fails.
  auto perf_once = [&](Op op, size_t size, size_t n) -> std::optional<double> {
    auto pr = run_perftest(*perftest, op == Op::Write ? "ucp_put_bw" : "ucp_get", size, n);
    if (!pr) {
      std::cerr << "ucx_perftest: " << pr.error().to_string() << "\n";
      return std::nullopt;
    }
    return pr->gbps;
  };
  auto keep_best = [](std::optional<double>& best, std::optional<double> v) {
    if (v) best = std::max(best.value_or(0), *v);
  };
  double worst = 1e9;
  report.doc["bandwidth"] = nlohmann::ordered_json::array();
  for (Op op : ops) {
    for (const Point& p : points) {
      const size_t request = p.size * p.count;
      const size_t iters =
          o.iters != 0 ? o.iters : std::clamp<size_t>(point_bytes / request, 8, 20000);
      const size_t inflight =
          o.inflight != 0 ? o.inflight : std::clamp<size_t>((size_t{4} << 20) / request, 1, 32);
      // ucx_perftest messages of `size` bytes for as many bytes as this row moves.
      auto messages = [&](size_t size) {
        return o.iters != 0 ? o.iters * request / size
                            : std::clamp<size_t>(point_bytes / size, 8, 100000);
      };
      // Our runs and ucx_perftest's interleaved, round by round, so that both meet the
      // machine in the same state (a run is a few milliseconds; a slow spell of a shared
      // machine used to fall on one side only).
      BwPoint r;
      std::optional<double> theirs, theirs_request;
      bool perf_ok = perftest.has_value();
      for (size_t round = 0; round < o.rounds; ++round) {
        auto one = measure_bandwidth(s, op, p.size, p.count, iters, inflight);
        if (!one) return one.error();
        if (one->gbps > r.gbps) r = *one;
        if (!perf_ok) continue;
        auto t = perf_once(op, p.size, messages(p.size));
        auto tr = p.count == 1 || !t ? t : perf_once(op, request, messages(request));
        perf_ok = t && tr;
        keep_best(theirs, t);
        keep_best(theirs_request, tr);
      }
      if (theirs_request && request >= (64u << 10))
        worst = std::min(worst, r.gbps / *theirs_request);
      add_bandwidth_row(bw, report, op, p, r, theirs, theirs_request);
    }
  }
  if (worst < 1e9) report.doc["worst_bandwidth_ratio"] = worst;
  if (!report.json) {
    std::cout << "Bandwidth, best of " << o.rounds
              << " runs each, ours and perftest's taking turns (GB/s = 1e9 B/s; perftest: "
                 "ucp_put_bw / ucp_get of one message of 'size', and of 'request', each buffer "
                 "reused)\n";
    bw.print(std::cout);
  }
  return {};
}

Status latency_section(Session& s, const XferOptions& o, const std::vector<Op>& ops,
                       const std::optional<Perftest>& perftest, Report& report) {
  Table lat({"op", "size", "p50 us", "mean us", "perftest p50 us", "ratio"});
  double worst = 0;
  report.doc["latency"] = nlohmann::ordered_json::array();
  for (Op op : ops) {
    for (size_t size : o.lat_sizes) {
      auto r = measure_latency(s, op, size, o.lat_iters);
      if (!r) return r.error();
      std::optional<double> theirs;
      if (perftest) {
        // A WRITE's post()+wait() ends when the data is complete at the target: a round
        // trip, which ucp_put_lat reports halved (ping-pong). A READ is a round trip;
        // ucp_get with one operation outstanding times exactly that.
        auto pr = op == Op::Write
                      ? run_perftest(*perftest, "ucp_put_lat", size, o.lat_iters)
                      : run_perftest(*perftest, "ucp_get", size, o.lat_iters, {"-O", "1"});
        if (!pr) std::cerr << "ucx_perftest: " << pr.error().to_string() << "\n";
        if (pr) theirs = op == Op::Write ? 2 * pr->p50_us : pr->p50_us;
      }
      if (theirs && *theirs > 0) worst = std::max(worst, r->p50_us / *theirs);
      lat.add({xfer::to_string(op), human_bytes(size), fixed(r->p50_us, 3), fixed(r->mean_us, 3),
               theirs ? fixed(*theirs, 3) : "-", ratio(r->p50_us, theirs)});
      report.doc["latency"].push_back(
          {{"op", xfer::to_string(op)},
           {"size", size},
           {"p50_us", r->p50_us},
           {"mean_us", r->mean_us},
           {"perftest_p50_us", theirs ? nlohmann::ordered_json(*theirs) : nullptr}});
    }
  }
  if (worst > 0) report.doc["worst_latency_ratio"] = worst;
  if (!report.json) {
    std::cout << "\nLatency of post()+wait(), 1 descriptor, polling, median of batches of "
              << kLatBatch
              << " round trips (perftest: WRITE = 2 x ucp_put_lat one-way, READ = ucp_get -O 1)\n";
    lat.print(std::cout);
  }
  return {};
}

// Whether a target against ucx_perftest was missed (bandwidth below 0.90x at >= 64 KiB,
// latency above 1.50x).
bool targets_missed(const Report& report) {
  const auto& d = report.doc;
  const bool bandwidth =
      d.contains("worst_bandwidth_ratio") && d["worst_bandwidth_ratio"].get<double>() < 0.9;
  return bandwidth || d.value("worst_latency_ratio", 0.0) > 1.5;
}

void print_targets(const Report& report) {
  const auto& d = report.doc;
  std::cout << "\nTargets: bandwidth >= 0.90x perftest (request size) at >= 64 KiB: ";
  if (d.contains("worst_bandwidth_ratio")) {
    const double w = d["worst_bandwidth_ratio"].get<double>();
    std::cout << "worst " << fixed(w, 2) << "x (" << (w >= 0.9 ? "met" : "missed") << ")";
  } else {
    std::cout << "no point >= 64 KiB";
  }
  const double l = d.value("worst_latency_ratio", 0.0);
  std::cout << "; latency <= 1.50x: worst " << fixed(l, 2) << "x (" << (l <= 1.5 ? "met" : "missed")
            << ")\n";
}

std::vector<Point> points_of(const XferOptions& o) {
  std::vector<Point> points;
  for (size_t s : o.sizes) {
    for (size_t d : o.descs) {
      if (s * d <= o.max_request) points.push_back({s, d});
    }
  }
  return points;
}

// ucx_perftest for the ratios: both its ends here against our own target; against a peer
// given by --peer, its client here against the server that `kvbm serve --perftest` keeps
// there and publishes the port of. An error says why there is none.
Result<Perftest> find_perftest(const XferOptions& o, Session& s, const char* tls) {
  auto exe = find_program(o.perftest);
  if (!exe) {
    return err(ErrorCode::NotFound, "ucx_perftest not found ('", o.perftest,
               "'; Debian package ucx-utils)");
  }
  if (o.peer.empty() && o.peer_etcd.empty()) {
    return Perftest{*exe, std::string(tls != nullptr ? tls : "tcp,self"), "", 0};
  }
  if (o.peer.empty()) {
    return err(ErrorCode::Unsupported, "--peer-etcd names no host for its client (use --peer)");
  }
  auto hp = parse_host_port(o.peer, false);
  if (!hp) return hp.error();
  auto item = s.agent->fetch_published(hp->first, hp->second, kServePerftestKey);
  unsigned port = 0;
  if (!item || !(std::istringstream(*item) >> port) || port == 0 || port > 65535) {
    return err(ErrorCode::NotFound,
               "the peer keeps no ucx_perftest server (start it with kvbm serve --perftest)");
  }
  return Perftest{*exe, tls != nullptr ? std::optional<std::string>(tls) : std::nullopt, hp->first,
                  static_cast<uint16_t>(port)};
}

// The JSON document's head: what ran, against which target.
nlohmann::ordered_json report_head(const XferOptions& o, const Session& s, const XferTarget& target,
                                   bool perftest) {
  const char* env_tls = std::getenv("UCX_TLS");
  return {
      {"command", "kvbm bench xfer"}, {"kvbm", version()},
      {"transport", o.transport},     {"ucx_tls", env_tls != nullptr ? env_tls : "(UCX default)"},
      {"peer", target.where},         {"peer_agent", s.peer},
      {"buffer_bytes", s.bytes},      {"verified", true},
      {"perftest", perftest}};
}

// The table's head: the transport, the target, and where the ratios come from.
void print_header(const XferOptions& o, const Session& s, const XferTarget& target, bool remote,
                  const Result<Perftest>& perftest) {
  const char* same_host = std::getenv("KVBM_UCX_SAME_HOST");
  const char* copy_threads = std::getenv("KVBM_UCX_COPY_THREADS");
  const char* rma = std::getenv("KVBM_UCX_RMA");
  const char* env_tls = std::getenv("UCX_TLS");
  std::cout << "kvbm bench xfer: transport " << o.transport
            << " (UCX_TLS=" << (env_tls != nullptr ? env_tls : "(UCX default)")
            << ", KVBM_UCX_SAME_HOST=" << (same_host != nullptr ? same_host : "(auto)")
            << ", KVBM_UCX_COPY_THREADS=" << (copy_threads != nullptr ? copy_threads : "(auto)")
            << ", KVBM_UCX_RMA=" << (rma != nullptr ? rma : "(auto)") << "), target "
            << target.where << " agent '" << s.peer << "'"
            << (remote            ? ""
                : o.target_thread ? " (progress thread)"
                                  : " (spinning on progress())")
            << ", buffers " << human_bytes(s.bytes) << " each, data verified\n";
  if (!perftest) {
    std::cout << perftest.error().message << ": no ratios\n";
  } else if (remote) {
    std::cout << "ucx_perftest: its client here, its server the peer's (kvbm serve --perftest) at "
              << perftest->host << ":" << perftest->port << "\n";
  }
  std::cout << "\n";
}

// Our own target, if any, told to quit; Remote when it exits badly.
Status stop_target(XferTarget& target) {
  if (!target.process) return {};
  target.process->send("quit");
  target.process->close_stdin();
  auto rc = target.process->wait(std::chrono::seconds(10));
  if (!rc || *rc != 0) {
    return err(ErrorCode::Remote,
               "target exited badly: ", rc ? std::to_string(*rc) : rc.error().to_string());
  }
  return {};
}

int run_xfer(XferOptions o) {
  const bool remote = !o.peer.empty() || !o.peer_etcd.empty();
  if (o.transport.empty()) o.transport = remote ? "auto" : "shm";
  std::vector<Op> ops;
  if (o.op != "read") ops.push_back(Op::Write);
  if (o.op != "write") ops.push_back(Op::Read);
  const std::vector<Point> points = points_of(o);
  if (points.empty()) {
    return fail("bench xfer", err(ErrorCode::InvalidArgument,
                                  "every size x descs exceeds --max-request ", o.max_request));
  }
  Session s;
  for (const Point& p : points) s.bytes = std::max(s.bytes, p.size * p.count);
  for (size_t l : o.lat_sizes) s.bytes = std::max(s.bytes, l);

  const char* tls = ucx_tls(o.transport);
  // Read by our UCX context, and inherited by our own target; a peer elsewhere is
  // reached through the user's devices.
  if (o.peer.empty() && o.peer_etcd.empty()) {
    use_loopback_env(tls);
  } else if (tls != nullptr) {
    setenv("UCX_TLS", tls, 1);
  }
  const std::filesystem::path file_dir =
      o.dir.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(o.dir);
  auto target = open_target(s, o, file_dir);
  if (!target) return fail("bench xfer", target.error());
  if (auto st = verify(s); !st) return fail("bench xfer", st.error());

  const Result<Perftest> found = find_perftest(o, s, tls);
  const std::optional<Perftest> perftest = found ? std::optional<Perftest>(*found) : std::nullopt;
  Report report;
  report.json = o.json;
  report.doc = report_head(o, s, *target, perftest.has_value());
  if (!o.json) print_header(o, s, *target, remote, found);
  if (auto st = bandwidth_section(s, o, ops, points, perftest, report); !st)
    return fail("bench xfer", st.error());
  if (auto st = latency_section(s, o, ops, perftest, report); !st)
    return fail("bench xfer", st.error());
  if (perftest && !o.json) print_targets(report);
  const bool missed = perftest && targets_missed(report);
  report.doc["verdict"] = missed ? "missed" : "ok";
  if (o.file_mib > 0 && s.file) {
    if (auto st = file_section(s, o, ops, file_dir, report); !st)
      return fail("bench xfer", st.error());
  }
  if (o.json) std::cout << report.doc.dump(2) << "\n";

  if (auto st = stop_target(*target); !st) return fail("bench xfer", st.error());
  if (o.check && missed) {
    std::cerr << "kvbm bench xfer: a target against ucx_perftest was missed (--check)\n";
    return 1;
  }
  return 0;
}

// The other end, started by `xfer` (and `soak`) itself; hidden from help. It is
// `kvbm serve` on loopback, driven over stdin.
void add_xfer_target(CLI::App& bench, Runner& runner) {
  auto t = std::make_shared<ServeOptions>();
  auto file_mib = std::make_shared<size_t>(0);
  auto progress_thread = std::make_shared<bool>(false);
  auto* target = bench.add_subcommand("xfer-target", "")->group("");
  target->add_option("--bytes", t->bytes, "Registered buffer size")
      ->check(CLI::Range(size_t{1}, size_t{1} << 40));
  target->add_flag("--progress-thread", *progress_thread, "Use the agent's progress thread");
  target->add_option("--file-mib", *file_mib, "Also serve a registered file of this size")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20));
  target->add_option("--dir", t->dir, "Where that file is made");
  target->callback([t, file_mib, progress_thread, &runner] {
    runner = [t, file_mib, progress_thread] {
      t->name = "kvbm-bench-target";
      t->listen = "127.0.0.1:0";
      t->file_bytes = *file_mib << 20;
      t->spin = !*progress_thread;
      t->bench_target = true;
      return run_serve(*t);
    };
  });
}

}  // namespace

void add_bench_xfer(CLI::App& bench, Runner& runner) {
  auto o = std::make_shared<XferOptions>();
  auto* cmd = bench.add_subcommand(
      "xfer",
      "Agent READ/WRITE between two processes on loopback, against ucx_perftest; or against "
      "`kvbm serve` on another host (--peer)");
  add_size_list_option(*cmd, "--sizes", o->sizes, "Bytes per descriptor, comma-separated", 1,
                       size_t{1} << 34);
  add_count_list_option(*cmd, "--descs", o->descs, "Descriptors per request, comma-separated", 1,
                        size_t{1} << 20);
  cmd->add_option("--iters", o->iters, "Requests per bandwidth point (0: ~256 MiB worth)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{100000000}));
  cmd->add_option("--inflight", o->inflight, "Requests in flight (0: ~4 MiB worth)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{0}, size_t{32}));
  add_size_option(*cmd, "--max-request", o->max_request, "Skip size x descs above this many bytes",
                  1, size_t{1} << 40);
  add_size_list_option(*cmd, "--lat-sizes", o->lat_sizes, "Message sizes for latency", 1,
                       size_t{64} << 20);
  cmd->add_option("--lat-iters", o->lat_iters, "Round trips per latency point")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{10000000}));
  add_size_option(*cmd, "--file-mib", o->file_mib,
                  "The peer's file: READ and WRITE a file of this many MiB that the target "
                  "registered, against the disk (0: skipped)",
                  0, size_t{1} << 20, size_t{1} << 20);
  add_size_list_option(*cmd, "--file-inflight", o->file_inflight,
                       "The peer's file: bytes of requests in flight, one row each (the owner "
                       "stages up to 64 MiB at once)",
                       4096, size_t{1} << 30);
  cmd->add_option("--dir", o->dir,
                  "Where the peer's file and the disk ceiling's file go (default: the temp dir)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--rounds", o->rounds,
                  "Bandwidth points: the best of this many runs, ours and ucx_perftest's")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{20}));
  cmd->add_option("--transport", o->transport,
                  "shm (UCX_TLS=sm,self), tcp (tcp,self) or auto (UCX_TLS as set, or UCX's "
                  "choice); default: shm, and auto with --peer/--peer-etcd")
      ->check(CLI::IsMember({"shm", "tcp", "auto"}));
  cmd->add_option("--op", o->op, "read, write or both")
      ->capture_default_str()
      ->check(CLI::IsMember({"read", "write", "both"}));
  cmd->add_option("--perftest", o->perftest, "The ucx_perftest program")->capture_default_str();
  cmd->add_flag("--target-thread", o->target_thread,
                "XferTarget agent uses its progress thread (default: it spins on progress())");
  auto* peer = cmd->add_option("--peer", o->peer,
                               "A served agent's side channel HOST:PORT (`kvbm serve` on another "
                               "host) instead of our own target process");
  auto* peer_etcd =
      cmd->add_option("--peer-etcd", o->peer_etcd,
                      "A served agent's name in etcd (`kvbm serve --etcd`) instead of our own "
                      "target process");
  peer->excludes(peer_etcd);
  cmd->add_option("--etcd", o->etcd,
                  "etcd endpoints for --peer-etcd, comma-separated (default: "
                  "$KVBM_ETCD_ENDPOINTS)")
      ->delimiter(',');
  cmd->add_option("--etcd-prefix", o->etcd_prefix,
                  "etcd key prefix (default: $KVBM_ETCD_PREFIX, else kvbm/)");
  cmd->add_flag("--json", o->json, "One JSON document on stdout instead of the tables");
  cmd->add_flag("--check", o->check,
                "Exit 1 when a target against ucx_perftest is missed (bandwidth >= 0.90x at >= "
                "64 KiB, latency <= 1.50x)");
  cmd->callback([o, &runner] { runner = [o] { return run_xfer(*o); }; });
  add_xfer_target(bench, runner);
}

}  // namespace kvbm::tools
