// libFuzzer target for Agent::load_remote_metadata with the real UCX backend: the UCX
// parts of a peer's metadata (its connection data: transport line, host line, worker
// address; a region's remote info and packed key) are what UCX would trust. The input
// replaces one of those parts of a live peer's metadata (another agent in this process),
// and the harness re-encodes the whole (so whatever envelope the metadata carries, such
// as an integrity check, is computed afresh and the mutation reaches the UCX parsing):
//   byte 0 = 0: the rest is the UCX connection data
//            1: the rest is region 0's UCX remote info
//            2: the rest is region 0's packed key (inside its remote info)
//            3: the rest is the worker address (after the transport and host lines)
//            4: the rest is the transport and host lines (before the worker address)
// Any input must load or fail with an error and a message, never crash or abort.
// KVBM_FUZZ_WRITE_SEEDS=<dir> writes one seed per part from the live peer, then exits;
// KVBM_FUZZ_PARTS=<digits> fuzzes only those parts (e.g. "12": the keys).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include "kvbm/log.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"
#include "xfer/backends/ucx/same_host.h"
#include "xfer/metadata.h"

namespace {

using namespace kvbm;
using xfer::detail::AgentMetadata;

struct World {
  std::unique_ptr<xfer::Agent> loader, peer;
  SystemStorage memory;
  AgentMetadata base;
  std::string conn, info;
  size_t address_at = 0;  // where the worker address starts in conn
};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "ucx_metadata_fuzz: %s\n", what.c_str());
  std::abort();
}

std::unique_ptr<xfer::Agent> make_agent(const std::string& name) {
  xfer::AgentConfig config;
  config.backends = {"UCX"};
  config.add_cuda_if_gpu = false;
  config.progress_thread = false;  // nothing moves between inputs
  auto a = xfer::Agent::create(name, config);
  if (!a) fail("agent: " + a.error().to_string());
  return std::move(*a);
}

World* make_world() {
  auto* w = new World{make_agent("loader"),
                      make_agent("peer"),
                      std::move(*SystemAllocator(SystemMemory::Shareable).allocate(65536)),
                      {},
                      {},
                      {},
                      0};
  if (auto st = w->peer->register_storage(w->memory); !st) fail(st.error().to_string());
  auto bytes = w->peer->local_metadata();
  if (!bytes) fail(bytes.error().to_string());
  auto md = xfer::detail::decode_metadata(*bytes, 1 << 20);
  if (!md || md->regions.empty()) fail("the peer's own metadata does not decode");
  w->base = std::move(*md);
  w->conn = w->base.backends.at("UCX");
  w->info = w->base.regions[0].remote_info.at("UCX");
  const size_t tl = w->conn.find('\n');
  w->address_at = w->conn.find('\n', tl + 1) + 1;
  return w;
}

void write_seeds(World& w, const std::string& dir) {
  auto info = xfer::detail::decode_region_info(w.info);
  const std::pair<const char*, std::string> seeds[] = {
      {"connection", std::string(1, '\0') + w.conn},
      {"region-info", std::string(1, '\1') + w.info},
      {"rkey", std::string(1, '\2') + info->rkey},
      {"address", std::string(1, '\3') + w.conn.substr(w.address_at)},
      {"lines", std::string(1, '\4') + w.conn.substr(0, w.address_at)}};
  for (const auto& [name, bytes] : seeds) std::ofstream(dir + "/" + name) << bytes;
}

World& world() {
  static World* w = make_world();
  return *w;
}

}  // namespace

// UCX keeps a few small allocations per endpoint it closes; kvbm's own leaks still count.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:libuct.so\nleak:libucs.so\nleak:libucp.so\n";
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvbm::set_log_level(kvbm::LogLevel::Off);
  setenv("UCX_LOG_LEVEL", "fatal", 0);  // UCX's own errors on refused input would drown the output
  if (const char* dir = std::getenv("KVBM_FUZZ_WRITE_SEEDS")) {
    write_seeds(world(), dir);
    std::exit(0);
  }
  (void)world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* parts = std::getenv("KVBM_FUZZ_PARTS");
  if (size < 1 || size > 4096) return -1;
  if (parts != nullptr && std::string_view(parts).find(char('0' + data[0])) == std::string::npos)
    return -1;
  World& w = world();
  const std::string part(reinterpret_cast<const char*>(data) + 1, size - 1);
  AgentMetadata md = w.base;
  switch (data[0]) {
    case 0:
      md.backends["UCX"] = part;
      break;
    case 1:
      md.regions[0].remote_info["UCX"] = part;
      break;
    case 2: {
      auto info = xfer::detail::decode_region_info(w.info);
      info->rkey = part;
      md.regions[0].remote_info["UCX"] = xfer::detail::encode_region_info(*info);
      break;
    }
    case 3:
      md.backends["UCX"] = w.conn.substr(0, w.address_at) + part;
      break;
    case 4:
      md.backends["UCX"] = part + w.conn.substr(w.address_at);
      break;
    default:
      return -1;
  }
  auto loaded = w.loader->load_remote_metadata(xfer::detail::encode_metadata(md));
  if (!loaded) {
    if (loaded.error().message.empty()) fail("error without a message");
    return 0;
  }
  if (*loaded != "peer") fail("loaded as '" + *loaded + "'");
  if (auto st = w.loader->invalidate_remote("peer"); !st) fail(st.error().to_string());
  return 0;
}
