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
#include "loopback_env.h"
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

// --dir checked, or a fresh temp dir made (and registered for removal on a signal); the exit
// status to return when neither works.
std::optional<int> prepare_dir(DemoDir& dir) {
  if (!dir.path.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir.path, ec)) {
      std::cerr << "kvbm demo: --dir " << dir.path.string() << " is not a directory"
                << (ec ? " (" + ec.message() + ")" : "") << "\n";
      return 2;
    }
    return std::nullopt;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvbm-demo-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::cerr << "kvbm demo: cannot make a temp dir: " << std::strerror(errno) << "\n";
    return 1;
  }
  dir.path = tmpl;
  dir.made = true;
  dir.signal_slot = remove_on_signal(dir.path, true);
  return std::nullopt;
}

template <typename T>
Result<Ceiling> pick(const Result<T>& ceilings, Ceiling T::*which) {
  return ceilings ? Result<Ceiling>((*ceilings).*which) : Result<Ceiling>(ceilings.error());
}

// One run of the demo, its steps in order. Members are declared in the order they must be
// made: the layouts (registered with the engine and the agent) go before the engine, the
// peer and the agent do, and the temp dir goes last.
class DemoRun {
 public:
  explicit DemoRun(const DemoOptions& options) : options_(options), dir_{options.dir} {}

  int run() {
    if (auto status = prepare_dir(dir_)) return *status;
    if (auto status = start()) return *status;
    print_header();
    if (auto status = make_source()) return *status;
    offload_from_gpu();
    disk_round_trip();
    onboard_to_gpu();
    staged_onboard();
    host_to_host();
    host_to_peer();
    return report();
  }

 private:
  // The agent, the peer (it starts meanwhile) and the engine; an exit status on failure.
  std::optional<int> start();
  void print_header() const;
  std::optional<int> make_source();
  void offload_from_gpu();
  void disk_round_trip();
  void onboard_to_gpu();
  void staged_onboard();
  void host_to_host();
  void host_to_peer();
  int report();

  // Host layouts are registered with the engine's file path (fixed buffers of its io_uring).
  Result<Layout> host_layout(LayoutKind kind) {
    auto l = gpu_ ? zeroed_layout(n_, kind, PinnedAllocator())
                  : zeroed_layout(n_, kind, SystemAllocator());
    if (l) KVBM_TRY(engine_->register_host_layout(*l));
    return l;
  }
  void add(Row row) {
    rows_.push_back(std::move(row));
    printer_.flush(rows_, rows_.size());
  }

  const DemoOptions& options_;
  DemoDir dir_;
  size_t n_ = 0, bytes_ = 0;
  std::string tls_;
  std::unique_ptr<xfer::Agent> agent_;
  Peer peer_;
  std::optional<Error> peer_error_;
  std::unique_ptr<TransferEngine> engine_;
  bool gpu_ = false;
  std::string why_no_gpu_, no_gpu_, host_;
  std::vector<Row> rows_;
  RowPrinter printer_;
  std::optional<Layout> src_;
  const Layout* offloaded_ = nullptr;  // where the blocks are that go to disk
  Result<demo::CudaCeilings> cuda_ = err(ErrorCode::DeviceUnavailable, "");
  std::optional<Layout> g1_, h2_, disk_, h3_;
  bool on_disk_ = false;  // the offload to disk succeeded
  Result<demo::DiskCeilings> disk_ceilings_ = err(ErrorCode::Internal, "not measured");
};

std::optional<int> DemoRun::start() {
  n_ = std::max<size_t>(1, options_.bytes / demo::block_bytes());
  bytes_ = n_ * demo::block_bytes();
  tls_ = options_.transport == "shm" ? "sm,self" : "tcp,self";
  use_loopback_env(tls_.c_str());  // read by our agent, and inherited by the peer
  // The agent first: layouts registered with it must go before it does.
  auto agent = xfer::Agent::create("prefill");
  if (!agent) {
    peer_error_ = agent.error();
  } else {
    agent_ = std::move(*agent);
    if (auto st = start_peer(peer_, n_, options_.corrupt_block); !st) peer_error_ = st.error();
  }
  auto engine = TransferEngine::create();
  if (!engine) {
    std::cerr << "kvbm demo: " << engine.error().to_string() << "\n";
    return 1;
  }
  engine_ = std::move(*engine);
  auto gpus = cuda_device_count();
  gpu_ = gpus && *gpus > 0;
  // Why GPU rows are skipped: in full above the table, its first clause in the table.
  why_no_gpu_ = gpu_ ? "" : (gpus ? "no GPU" : gpus.error().message);
  no_gpu_ = why_no_gpu_.substr(0, why_no_gpu_.find(':'));
  host_ = gpu_ ? "pinned" : "host";
  printer_.json = options_.json;
  return std::nullopt;
}

void DemoRun::print_header() const {
  if (options_.json) return;
  std::cout << "kvbm demo: " << n_ << " blocks of " << human_bytes(demo::block_bytes())
            << " (2 layers x K/V x 16 tokens x 2048 x 2 B: 64 KiB chunks), " << human_bytes(bytes_)
            << " per tier\n"
            << "  host tier: " << (gpu_ ? "pinned (cudaHostAlloc)" : "plain (page-aligned)")
            << "; GPU: " << (gpu_ ? "GPU 0" : "none (" + why_no_gpu_ + ")") << "\n"
            << "  disk: " << dir_.path.string() << "\n"
            << "  peer: agent 'decode' in process "
            << (peer_.process ? std::to_string(peer_.process->pid()) : "-") << ", UCX_TLS=" << tls_
            << ", metadata over 127.0.0.1\n\n";
}

// The blocks, filled with the pattern, in host memory.
std::optional<int> DemoRun::make_source() {
  auto src = host_layout(LayoutKind::FullyContiguous);
  if (!src) {
    std::cerr << "kvbm demo: " << src.error().to_string() << "\n";
    return 1;
  }
  src_.emplace(std::move(*src));
  if (auto st = demo::fill_blocks(*src_, kSeed); !st) {
    std::cerr << "kvbm demo: " << st.error().to_string() << "\n";
    return 1;
  }
  offloaded_ = &*src_;
  return std::nullopt;
}

// GPU -> pinned (offload). The blocks are put on the GPU with one cudaMemcpy first.
void DemoRun::offload_from_gpu() {
  const std::string offload = "GPU -> pinned (offload)";
  cuda_ = err(ErrorCode::DeviceUnavailable, no_gpu_);
  if (!gpu_) return add(skipped(offload, bytes_, no_gpu_));
  cuda_ = demo::cuda_ceilings(bytes_, kReps);
  auto dev = zeroed_layout(n_, LayoutKind::FullyContiguous, DeviceAllocator(0));
  auto pinned = host_layout(LayoutKind::FullyContiguous);
  Status st = !dev ? Status(dev.error()) : !pinned ? Status(pinned.error()) : Status();
  if (st) st = demo::copy_to_device(dev->region(0), src_->region(0).data());
  if (!st) return add(failed(offload, bytes_, st.error().to_string()));
  g1_.emplace(std::move(*dev));
  h2_.emplace(std::move(*pinned));
  add(hop(offload, *engine_, *g1_, *h2_, false, pick(cuda_, &demo::CudaCeilings::to_host)));
  if (!rows_.back().failed) offloaded_ = &*h2_;
}

// host -> disk (offload) and disk -> host (onboard).
void DemoRun::disk_round_trip() {
  const std::string to_disk = host_ + " -> disk (offload)",
                    from_disk = "disk -> " + host_ + " (onboard)";
  disk_ceilings_ = demo::disk_ceilings(dir_.path, bytes_, kReps);
  auto d = Layout::allocate(demo::block_config(n_), LayoutKind::FullyContiguous,
                            DiskAllocator(dir_.path));
  if (d) {
    if (auto st = unlink_regions(*d); !st) d = st.error();
  }
  auto back = host_layout(LayoutKind::FullyContiguous);
  if (!d) {
    rows_.push_back(failed(to_disk, bytes_, d.error().to_string()));
    return add(not_run(from_disk, bytes_, "no disk layout"));
  }
  if (!back) {
    rows_.push_back(not_run(to_disk, bytes_, "no host layout to onboard into"));
    return add(failed(from_disk, bytes_, back.error().to_string()));
  }
  disk_.emplace(std::move(*d));
  h3_.emplace(std::move(*back));
  rows_.push_back(hop(to_disk, *engine_, *offloaded_, *disk_, false,
                      pick(disk_ceilings_, &demo::DiskCeilings::write)));
  if (rows_.back().failed) {
    h3_.reset();
    return add(not_run(from_disk, bytes_, "the offload failed"));
  }
  on_disk_ = true;
  rows_.push_back(hop(from_disk, *engine_, *disk_, *h3_, false,
                      pick(disk_ceilings_, &demo::DiskCeilings::read)));
  if (rows_.back().failed) h3_.reset();
  printer_.flush(rows_, rows_.size());
}

// pinned -> GPU (onboard).
void DemoRun::onboard_to_gpu() {
  const std::string onboard = "pinned -> GPU (onboard)";
  if (!gpu_) return add(skipped(onboard, bytes_, no_gpu_));
  if (!h3_) return add(not_run(onboard, bytes_, "nothing came back from disk"));
  auto g2 = zeroed_layout(n_, LayoutKind::FullyContiguous, DeviceAllocator(0));
  if (!g2) return add(failed(onboard, bytes_, g2.error().to_string()));
  add(hop(onboard, *engine_, *h3_, *g2, false, pick(cuda_, &demo::CudaCeilings::to_device)));
}

// disk -> GPU (onboard) in one request: the engine stages it through pinned memory.
void DemoRun::staged_onboard() {
  const std::string direct = "disk -> GPU (staged onboard)";
  if (!gpu_) return add(skipped(direct, bytes_, no_gpu_));
  if (!on_disk_) return add(not_run(direct, bytes_, "the offload to disk failed"));
  auto g3 = zeroed_layout(n_, LayoutKind::FullyContiguous, DeviceAllocator(0));
  if (!g3) return add(failed(direct, bytes_, g3.error().to_string()));
  add(hop(direct, *engine_, *disk_, *g3, false, pick(disk_ceilings_, &demo::DiskCeilings::read)));
}

// The blocks that came back from disk, host -> host.
void DemoRun::host_to_host() {
  const std::string to_host = host_ + " -> host (scattered)";
  if (!h3_) return add(not_run(to_host, bytes_, "nothing came back from disk"));
  auto h4 = zeroed_layout(n_, LayoutKind::FullyContiguous, SystemAllocator());
  if (!h4) return add(failed(to_host, bytes_, h4.error().to_string()));
  add(hop(to_host, *engine_, *h3_, *h4, true,
          demo::host_copy_ceiling(bytes_, engine_->host_threads(), kReps)));
}

// The blocks that came back from disk, host -> peer; then the peer's exit, which fails the
// row when it is not clean. The row prints once the peer has exited.
void DemoRun::host_to_peer() {
  const std::string to_peer = host_ + " -> peer (loopback)";
  if (peer_error_) {
    rows_.push_back(failed(to_peer, bytes_, peer_error_->to_string()));
  } else if (!h3_) {
    rows_.push_back(not_run(to_peer, bytes_, "nothing came back from disk"));
  } else if (auto st = h3_->register_with_agent(*agent_); !st) {
    rows_.push_back(failed(to_peer, bytes_, st.error().to_string()));
  } else {
    rows_.push_back(ship_to_peer(to_peer, *engine_, *agent_, peer_, *h3_));
  }
  if (auto st = finish_peer(peer_); !st && !peer_error_) {
    Row& r = rows_.back();
    if (!r.failed) r.verified = "error: " + st.error().to_string();
    r.failed = true;
  }
  printer_.flush(rows_, rows_.size());
}

// The prefix-reuse act, then the JSON document or the closing lines; the exit status.
int DemoRun::report() {
  bool bad = false;
  for (const Row& r : rows_) bad |= r.failed;
  Json reuse_rows = Json::array();
  std::ostringstream discard;  // with --json, the act's table is omitted
  const bool reused = demo::prefix_reuse_act(dir_.path, options_.json ? discard : std::cout,
                                             options_.json ? &reuse_rows : nullptr);
  bad |= !reused;
  if (options_.json) {
    Json j = {{"command", "kvbm demo"},
              {"kvbm", version()},
              {"versions", versions_json()},
              {"machine", machine_json()},
              {"options",
               {{"mib", options_.bytes >> 20},
                {"blocks", n_},
                {"block_bytes", demo::block_bytes()},
                {"dir", dir_.path.string()},
                {"transport", options_.transport},
                {"ucx_tls", tls_}}},
              {"host_tier", gpu_ ? "pinned" : "plain"},
              {"gpu", gpu_ ? "GPU 0" : "none (" + why_no_gpu_ + ")"},
              {"rows", Json::array()}};
    for (const Row& r : rows_) j["rows"].push_back(to_json(r));
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

}  // namespace

int run_demo(const DemoOptions& options) {
  return DemoRun(options).run();
}

}  // namespace kvbm::tools
