// `kvbm demo`: the main job, end to end. Allocates KV block layouts on every tier this
// machine has, fills the blocks with a known pattern, offloads them GPU -> pinned -> disk,
// onboards them back disk -> pinned -> GPU and disk -> GPU in one request (the engine's
// staged path), copies them host -> host, and ships them to a second agent process
// ("decode", tools/demo_peer.cc) over loopback with a notification.
// Every hop goes through the transfer engine and is verified block by block; each is timed
// next to the ceiling of its path, measured in the same run on the same byte count.
// Without a GPU the GPU hops are listed as skipped and the host tier is plain memory.
//
// Block ids: the tier hops (GPU, disk) move block i to block i, as offload and onboard of a
// whole cache do; host -> host and host -> peer move block i to block n-1-i, so every block
// moves as its own chunks (scattered), and the peer's layout is layer-separate.
// Rows print as they finish; with --json, one JSON document at the end instead (progress on
// stderr when it is a terminal).
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <numeric>
#include <optional>
#include <sstream>

#include "cleanup.h"
#include "commands.h"
#include "demo_blocks.h"
#include "demo_ceilings.h"
#include "demo_reuse.h"
#include "kvbm/storage.h"
#include "kvbm/transfer.h"
#include "kvbm/version.h"
#include "kvbm/xfer/agent.h"
#include "report.h"
#include "subprocess.h"
#include "table.h"

namespace kvbm::tools {
namespace {

using demo::Ceiling;
using namespace std::chrono_literals;

constexpr int kReps = 3;  // each ceiling (each of its variants): the best of this many runs
// Each hop: one untimed run first (the file's first write converts its fallocated extents,
// rings and tables are made), then the best of this many. More than kReps because a
// ceiling is the best of its variants, each kReps runs: the disk's ceiling gets 6 to 9
// samples of a disk whose runs vary by a third.
constexpr int kHopReps = 6;
constexpr uint64_t kSeed = 0x6b76;  // the pattern
constexpr int kPeerTimeoutS = 60;

struct Row {
  Row(std::string p, size_t b, std::string v = "", bool f = false)
      : path(std::move(p)), bytes(b), verified(std::move(v)), failed(f) {}
  std::string path;
  size_t bytes = 0;
  std::optional<double> gbps;
  std::optional<Ceiling> ceiling;
  std::string ceiling_note;  // why there is no ceiling
  std::string verified;      // "ok", "CORRUPT block N (...)", "error: ...", "skipped: ..."
  bool failed = false;
};

Row skipped(std::string path, size_t bytes, const std::string& why) {
  return Row(std::move(path), bytes, "skipped: " + why, false);
}

Row failed(std::string path, size_t bytes, const std::string& why) {
  return Row(std::move(path), bytes, "error: " + why, true);
}

Row not_run(std::string path, size_t bytes, const std::string& because) {
  return Row(std::move(path), bytes, "not run: " + because, true);
}

void set_ceiling(Row& r, Result<Ceiling> c) {
  if (c) {
    r.ceiling = *c;
  } else {
    r.ceiling_note = "error: " + c.error().to_string();
    r.failed = true;
  }
}

void set_verdict(Row& r, Result<std::string> v) {
  r.verified = v ? *v : "error: " + v.error().to_string();
  r.failed |= !v || *v != "ok";
}

std::vector<size_t> identity(size_t n) {
  std::vector<size_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

std::vector<size_t> reversed_ids(size_t n) {
  std::vector<size_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = demo::reversed(n, i);
  return ids;
}

size_t same_block(size_t b) {
  return b;
}

// One hop through the engine: every block of `src` into `dst` (block i to block i, or to
// n-1-i when `reverse`), a warm-up and the best of kHopReps runs, then every block of `dst`
// checked.
Row hop(std::string path, TransferEngine& engine, const Layout& src, Layout& dst, bool reverse,
        Result<Ceiling> ceiling) {
  const size_t n = src.config().num_blocks;
  Row r(std::move(path), n * demo::block_bytes());
  const std::vector<size_t> sids = identity(n), dids = reverse ? reversed_ids(n) : identity(n);
  auto once = [&]() -> Status {
    auto t = engine.copy(src, sids, dst, dids);
    if (!t) return t.error();
    return t->wait(5min);
  };
  const Status warm = once();
  auto g = warm ? demo::best_gbps(r.bytes, kHopReps, once) : Result<double>(warm.error());
  if (!g) return failed(r.path, r.bytes, g.error().to_string());
  r.gbps = *g;
  set_ceiling(r, std::move(ceiling));
  if (reverse) {
    set_verdict(r, demo::check_blocks(dst, kSeed, [n](size_t d) { return demo::reversed(n, d); }));
  } else {
    set_verdict(r, demo::check_blocks(dst, kSeed, same_block));
  }
  return r;
}

template <typename Allocator>
Result<Layout> zeroed_layout(size_t n, LayoutKind kind, const Allocator& allocator) {
  auto l = Layout::allocate(demo::block_config(n), kind, allocator);
  if (!l) return l.error();
  for (size_t i = 0; i < l->num_regions(); ++i) KVBM_TRY(demo::zero_region(l->region(i)));
  return l;
}

// The peer process and what it published.
struct Peer {
  std::optional<Subprocess> process;
  std::string agent;  // its agent's name, once its metadata is loaded
  uint64_t scratch = 0;
  std::optional<Layout> layout;  // its blocks, as seen from here (Layout::from_bytes)
};

Status start_peer(Peer& peer, size_t n, size_t corrupt_block) {
  Subprocess::Options o;
  o.pipe_stdin = true;
  o.pipe_stdout = true;
  std::vector<std::string> argv = {
      "/proc/self/exe", "demo-peer",           "--blocks",    std::to_string(n),
      "--seed",         std::to_string(kSeed), "--timeout-s", std::to_string(kPeerTimeoutS)};
  if (corrupt_block != SIZE_MAX) {
    argv.push_back("--corrupt-block");
    argv.push_back(std::to_string(corrupt_block));
  }
  auto p = spawn_child(argv, o);
  if (!p) return p.error();
  peer.process.emplace(std::move(*p));
  return {};
}

// A line from the peer that starts with one of `words` (UCX may log to stdout too).
Result<std::string> peer_line(Subprocess& p, std::initializer_list<std::string_view> words,
                              std::chrono::milliseconds timeout) {
  for (;;) {
    auto line = p.read_line(timeout);
    if (!line) return err(line.code(), "peer: ", line.error().message);
    if (line->rfind("ERROR ", 0) == 0) return err(ErrorCode::Remote, "peer: ", line->substr(6));
    for (auto w : words)
      if (line->rfind(w, 0) == 0) return *line;
  }
}

Status connect_peer(Peer& peer, xfer::Agent& agent) {
  auto ready = peer_line(*peer.process, {"READY "}, 30s);
  if (!ready) return ready.error();
  std::istringstream in(*ready);
  std::string word, hex;
  unsigned port = 0;
  if (!(in >> word >> port >> peer.scratch >> hex) || port == 0 || port > 65535) {
    return err(ErrorCode::Remote, "peer sent a bad READY line: ", ready->substr(0, 200));
  }
  auto bytes = demo::from_hex(hex);
  if (!bytes) return err(ErrorCode::Remote, "peer's layout is not hex");
  auto layout = Layout::from_bytes(*bytes);
  if (!layout) return layout.error();
  peer.layout.emplace(std::move(*layout));
  auto name = agent.fetch_remote_metadata("127.0.0.1", static_cast<uint16_t>(port));
  if (!name) return name.error();
  peer.agent = *name;
  return {};
}

// host -> peer: every block into the peer's block n-1-i with one engine request, the last
// run carrying the notification on which the peer checks every block and reports.
Row ship_to_peer(std::string path, TransferEngine& engine, xfer::Agent& agent, Peer& peer,
                 const Layout& src) {
  const size_t n = src.config().num_blocks;
  Row r(std::move(path), n * demo::block_bytes());
  if (auto st = connect_peer(peer, agent); !st)
    return failed(r.path, r.bytes, st.error().to_string());
  // The ceiling first: it writes the peer's scratch buffer, never its blocks.
  set_ceiling(r, demo::remote_ceiling(agent, peer.agent, peer.scratch, r.bytes, kReps));
  const std::vector<size_t> sids = identity(n), dids = reversed_ids(n);
  int run = 0;
  auto g = demo::best_gbps(r.bytes, kReps, [&]() -> Status {
    CopyOptions o;
    o.agent = &agent;
    if (++run == kReps) o.notification = "kvbm demo: " + std::to_string(n) + " blocks";
    auto t = engine.copy(src, sids, *peer.layout, dids, o);
    if (!t) return t.error();
    return t->wait(5min);
  });
  if (!g) return failed(r.path, r.bytes, g.error().to_string());
  r.gbps = *g;
  auto verdict = peer_line(*peer.process, {"VERIFIED "}, std::chrono::seconds(kPeerTimeoutS));
  if (!verdict) {
    set_verdict(r, verdict.error());
  } else {
    const std::string v = verdict->substr(9);
    r.verified = v + " (checked by peer)";
    r.failed |= v != "ok";
  }
  return r;
}

Status finish_peer(Peer& peer) {
  if (!peer.process) return {};
  peer.process->send("quit");
  peer.process->close_stdin();
  auto rc = peer.process->wait(10s);
  if (!rc) {
    peer.process->kill_now();
    return err(ErrorCode::Timeout, "the peer did not exit within 10 s");
  }
  if (*rc != 0) return err(ErrorCode::Remote, "the peer exited with status ", *rc);
  return {};
}

// Removes the temp dir it made, if any, at the end and on SIGINT/SIGTERM (tools/cleanup.h).
struct DemoDir {
  std::filesystem::path path;
  bool made = false;
  int signal_slot = -1;
  ~DemoDir() {
    std::error_code ec;
    if (made) std::filesystem::remove_all(path, ec);
    forget_on_signal(signal_slot);
  }
};

// A row's table cells and its JSON form (figures null where there are none).
std::vector<std::string> cells(const Row& r) {
  const bool both = r.gbps && r.ceiling && r.ceiling->gbps > 0;
  return {r.path,
          human_bytes(r.bytes),
          r.gbps ? fixed(*r.gbps, 2) : "-",
          r.ceiling ? fixed(r.ceiling->gbps, 2) : "-",
          both ? fixed(*r.gbps / r.ceiling->gbps, 2) : "-",
          r.ceiling ? r.ceiling->name : (r.ceiling_note.empty() ? "-" : r.ceiling_note),
          r.verified};
}

Json to_json(const Row& r) {
  Json j = {{"path", r.path},         {"bytes", r.bytes},
            {"gbps", nullptr},        {"ceiling_gbps", nullptr},
            {"ratio", nullptr},       {"ceiling", r.ceiling ? r.ceiling->name : r.ceiling_note},
            {"verified", r.verified}, {"failed", r.failed}};
  if (r.gbps) j["gbps"] = *r.gbps;
  if (r.ceiling) j["ceiling_gbps"] = r.ceiling->gbps;
  if (r.gbps && r.ceiling && r.ceiling->gbps > 0) j["ratio"] = *r.gbps / r.ceiling->gbps;
  return j;
}

// Prints the rows not printed yet: table lines, or with --json progress lines only.
struct RowPrinter {
  bool json = false;
  StreamTable table{std::cout,
                    {"path", "bytes", "GB/s", "ceiling GB/s", "ratio", "ceiling", "verified"},
                    {28, 7, 5, 5, 5, 54}};
  size_t printed = 0;
  void flush(const std::vector<Row>& rows, size_t upto) {
    for (; printed < upto && printed < rows.size(); ++printed) {
      const Row& r = rows[printed];
      if (!json) {
        table.add(cells(r));
      } else {
        progress("kvbm demo: " + r.path + ": " + r.verified);
      }
    }
  }
};

// Disk layouts go through the engine by file descriptor: their names can go at once, so a
// stopped demo leaves no file of --mib bytes behind.
Status unlink_regions(Layout& l) {
  for (size_t i = 0; i < l.num_regions(); ++i) {
    if (auto* d = dynamic_cast<DiskStorage*>(&l.region(i))) KVBM_TRY(d->unlink());
  }
  return {};
}

}  // namespace

int run_demo(const DemoOptions& options) {
  DemoDir dir{options.dir};
  if (!dir.path.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir.path, ec)) {
      std::cerr << "kvbm demo: --dir " << dir.path.string() << " is not a directory"
                << (ec ? " (" + ec.message() + ")" : "") << "\n";
      return 2;
    }
  } else {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvbm-demo-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::cerr << "kvbm demo: cannot make a temp dir: " << std::strerror(errno) << "\n";
      return 1;
    }
    dir.path = tmpl;
    dir.made = true;
    dir.signal_slot = remove_on_signal(dir.path, true);
  }
  const size_t n = std::max<size_t>(1, options.bytes / demo::block_bytes());
  const size_t bytes = n * demo::block_bytes();
  const std::string tls = options.transport == "shm" ? "sm,self" : "tcp,self";
  setenv("UCX_TLS", tls.c_str(), 1);  // read by our agent, and inherited by the peer

  // The agent first: layouts registered with it must go before it does.
  auto agent = xfer::Agent::create("prefill");
  Peer peer;
  std::optional<Error> peer_error;
  if (!agent) peer_error = agent.error();
  if (!peer_error) {
    if (auto st = start_peer(peer, n, options.corrupt_block); !st)
      peer_error = st.error();  // it starts meanwhile
  }
  auto engine = TransferEngine::create();
  if (!engine) {
    std::cerr << "kvbm demo: " << engine.error().to_string() << "\n";
    return 1;
  }

  auto gpus = cuda_device_count();
  const bool gpu = gpus && *gpus > 0;
  // Why GPU rows are skipped: in full above the table, its first clause in the table.
  const std::string why_no_gpu = gpu ? "" : (gpus ? "no GPU" : gpus.error().message);
  const std::string no_gpu = why_no_gpu.substr(0, why_no_gpu.find(':'));
  const std::string host = gpu ? "pinned" : "host";
  // Host layouts are registered with the engine's file path (fixed buffers of its io_uring).
  auto host_layout = [&](LayoutKind kind) -> Result<Layout> {
    auto l =
        gpu ? zeroed_layout(n, kind, PinnedAllocator()) : zeroed_layout(n, kind, SystemAllocator());
    if (l) KVBM_TRY((*engine)->register_host_layout(*l));
    return l;
  };

  if (!options.json)
    std::cout << "kvbm demo: " << n << " blocks of " << human_bytes(demo::block_bytes())
              << " (2 layers x K/V x 16 tokens x 2048 x 2 B: 64 KiB chunks), " << human_bytes(bytes)
              << " per tier\n"
              << "  host tier: " << (gpu ? "pinned (cudaHostAlloc)" : "plain (page-aligned)")
              << "; GPU: " << (gpu ? "GPU 0" : "none (" + why_no_gpu + ")") << "\n"
              << "  disk: " << dir.path.string() << "\n"
              << "  peer: agent 'decode' in process "
              << (peer.process ? std::to_string(peer.process->pid()) : "-") << ", UCX_TLS=" << tls
              << ", metadata over 127.0.0.1\n\n";

  std::vector<Row> rows;
  RowPrinter printer{options.json};
  auto flush = [&] { printer.flush(rows, rows.size()); };
  // The blocks, filled with the pattern, in host memory.
  auto src = host_layout(LayoutKind::FullyContiguous);
  if (!src) {
    std::cerr << "kvbm demo: " << src.error().to_string() << "\n";
    return 1;
  }
  if (auto st = demo::fill_blocks(*src, kSeed); !st) {
    std::cerr << "kvbm demo: " << st.error().to_string() << "\n";
    return 1;
  }
  const Layout* offloaded = &*src;  // where the blocks are that go to disk

  // GPU -> pinned (offload). The blocks are put on the GPU with one cudaMemcpy first.
  Result<demo::CudaCeilings> cuda = err(ErrorCode::DeviceUnavailable, no_gpu);
  std::optional<Layout> g1, h2;
  const std::string offload = "GPU -> pinned (offload)";
  if (!gpu) {
    rows.push_back(skipped(offload, bytes, no_gpu));
  } else {
    cuda = demo::cuda_ceilings(bytes, kReps);
    auto dev = zeroed_layout(n, LayoutKind::FullyContiguous, DeviceAllocator(0));
    auto pinned = host_layout(LayoutKind::FullyContiguous);
    Status st = !dev ? Status(dev.error()) : !pinned ? Status(pinned.error()) : Status();
    if (st) st = demo::copy_to_device(dev->region(0), src->region(0).data());
    if (!st) {
      rows.push_back(failed(offload, bytes, st.error().to_string()));
    } else {
      g1.emplace(std::move(*dev));
      h2.emplace(std::move(*pinned));
      rows.push_back(hop(offload, **engine, *g1, *h2, false,
                         cuda ? Result<Ceiling>(cuda->to_host) : Result<Ceiling>(cuda.error())));
      if (!rows.back().failed) offloaded = &*h2;
    }
  }
  flush();

  // host -> disk (offload) and disk -> host (onboard).
  std::optional<Layout> disk, h3;
  bool on_disk = false;  // the offload to disk succeeded
  const std::string to_disk = host + " -> disk (offload)",
                    from_disk = "disk -> " + host + " (onboard)";
  auto ceilings = demo::disk_ceilings(dir.path, bytes, kReps);
  {
    auto d = Layout::allocate(demo::block_config(n), LayoutKind::FullyContiguous,
                              DiskAllocator(dir.path));
    if (d) {
      if (auto st = unlink_regions(*d); !st) d = st.error();
    }
    auto back = host_layout(LayoutKind::FullyContiguous);
    if (!d) {
      rows.push_back(failed(to_disk, bytes, d.error().to_string()));
      rows.push_back(not_run(from_disk, bytes, "no disk layout"));
    } else if (!back) {
      rows.push_back(not_run(to_disk, bytes, "no host layout to onboard into"));
      rows.push_back(failed(from_disk, bytes, back.error().to_string()));
    } else {
      disk.emplace(std::move(*d));
      h3.emplace(std::move(*back));
      auto w = ceilings ? Result<Ceiling>(ceilings->write) : Result<Ceiling>(ceilings.error());
      auto r = ceilings ? Result<Ceiling>(ceilings->read) : Result<Ceiling>(ceilings.error());
      rows.push_back(hop(to_disk, **engine, *offloaded, *disk, false, std::move(w)));
      if (rows.back().failed) {
        rows.push_back(not_run(from_disk, bytes, "the offload failed"));
        h3.reset();
      } else {
        on_disk = true;
        rows.push_back(hop(from_disk, **engine, *disk, *h3, false, std::move(r)));
        if (rows.back().failed) h3.reset();
      }
    }
  }
  flush();

  // pinned -> GPU (onboard).
  const std::string onboard = "pinned -> GPU (onboard)";
  if (!gpu) {
    rows.push_back(skipped(onboard, bytes, no_gpu));
  } else if (!h3) {
    rows.push_back(not_run(onboard, bytes, "nothing came back from disk"));
  } else {
    auto g2 = zeroed_layout(n, LayoutKind::FullyContiguous, DeviceAllocator(0));
    if (!g2) {
      rows.push_back(failed(onboard, bytes, g2.error().to_string()));
    } else {
      rows.push_back(hop(onboard, **engine, *h3, *g2, false,
                         cuda ? Result<Ceiling>(cuda->to_device) : Result<Ceiling>(cuda.error())));
    }
  }
  flush();

  // disk -> GPU (onboard) in one request: the engine stages it through pinned memory.
  const std::string direct = "disk -> GPU (staged onboard)";
  if (!gpu) {
    rows.push_back(skipped(direct, bytes, no_gpu));
  } else if (!on_disk) {
    rows.push_back(not_run(direct, bytes, "the offload to disk failed"));
  } else {
    auto g3 = zeroed_layout(n, LayoutKind::FullyContiguous, DeviceAllocator(0));
    if (!g3) {
      rows.push_back(failed(direct, bytes, g3.error().to_string()));
    } else {
      rows.push_back(
          hop(direct, **engine, *disk, *g3, false,
              ceilings ? Result<Ceiling>(ceilings->read) : Result<Ceiling>(ceilings.error())));
    }
  }
  flush();

  // The blocks that came back from disk: host -> host and host -> peer.
  const Layout* back = h3 ? &*h3 : nullptr;
  const std::string to_host = host + " -> host (scattered)";
  if (!back) {
    rows.push_back(not_run(to_host, bytes, "nothing came back from disk"));
  } else {
    auto h4 = zeroed_layout(n, LayoutKind::FullyContiguous, SystemAllocator());
    if (!h4) {
      rows.push_back(failed(to_host, bytes, h4.error().to_string()));
    } else {
      rows.push_back(hop(to_host, **engine, *back, *h4, true,
                         demo::host_copy_ceiling(bytes, (*engine)->host_threads(), kReps)));
    }
  }
  flush();

  const std::string to_peer = host + " -> peer (loopback)";
  if (peer_error) {
    rows.push_back(failed(to_peer, bytes, peer_error->to_string()));
  } else if (!back) {
    rows.push_back(not_run(to_peer, bytes, "nothing came back from disk"));
  } else if (auto st = h3->register_with_agent(**agent); !st) {
    rows.push_back(failed(to_peer, bytes, st.error().to_string()));
  } else {
    rows.push_back(ship_to_peer(to_peer, **engine, **agent, peer, *back));
  }
  if (auto st = finish_peer(peer); !st && !peer_error) {
    Row& r = rows.back();
    if (!r.failed) r.verified = "error: " + st.error().to_string();
    r.failed = true;
  }

  flush();  // the peer's row, once the peer has exited
  bool bad = false;
  for (const Row& r : rows) bad |= r.failed;
  Json reuse_rows = Json::array();
  std::ostringstream discard;  // with --json, the act's table is omitted
  const bool reused = demo::prefix_reuse_act(dir.path, options.json ? discard : std::cout,
                                             options.json ? &reuse_rows : nullptr);
  bad |= !reused;
  if (options.json) {
    Json j = {{"command", "kvbm demo"},
              {"kvbm", version()},
              {"versions", versions_json()},
              {"machine", machine_json()},
              {"options",
               {{"mib", options.bytes >> 20},
                {"blocks", n},
                {"block_bytes", demo::block_bytes()},
                {"dir", dir.path.string()},
                {"transport", options.transport},
                {"ucx_tls", tls}}},
              {"host_tier", gpu ? "pinned" : "plain"},
              {"gpu", gpu ? "GPU 0" : "none (" + why_no_gpu + ")"},
              {"rows", Json::array()}};
    for (const Row& r : rows) j["rows"].push_back(to_json(r));
    j["prefix_reuse"] = {{"rows", std::move(reuse_rows)}, {"ok", reused}};
    j["verdict"] = bad ? "failed" : "ok";
    print_json(j);
    return bad ? 1 : 0;
  }
  std::cout << "\nGB/s = 1e9 B/s: each hop the best of " << kHopReps
            << " runs after a warm-up, each ceiling the best of its variants, " << kReps
            << " runs each; every block checked after each hop\n"
            << (bad ? "FAILED: a path errored or a block did not arrive intact"
                    : "OK: every block verified on every path this machine has")
            << "\n";
  return bad ? 1 : 0;
}

}  // namespace kvbm::tools
