// `kvbm info`: what this machine offers kvbm, the way ucx_info shows what UCX sees: the
// versions, UCX's transports, io_uring, O_DIRECT in the disk directory, the memlock limit,
// cuFile, and the GPUs with their PCIe links, NUMA nodes and the pinned <-> GPU engines
// the transfer engine measures on each.
#include <dlfcn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include <ucp/api/ucp.h>
#include <uct/api/uct.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/uring_batch.h"
#include "kvbm/storage.h"
#include "kvbm/transfer.h"
#include "kvbm/version.h"
#include "table.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

// "tcp (lo, eth0), sysv (memory), ..." from UCT's components, as `ucx_info -d` lists them.
std::string ucx_transports() {
  uct_component_h* components = nullptr;
  unsigned n = 0;
  if (uct_query_components(&components, &n) != UCS_OK) return "(UCT does not answer)";
  std::map<std::string, std::set<std::string>> devices;  // transport -> devices
  for (unsigned c = 0; c < n; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    for (const auto& md_desc : mds) {
      uct_md_config_t* config = nullptr;
      if (uct_md_config_read(components[c], nullptr, nullptr, &config) != UCS_OK) continue;
      uct_md_h md = nullptr;
      const ucs_status_t opened = uct_md_open(components[c], md_desc.md_name, config, &md);
      uct_config_release(config);
      if (opened != UCS_OK) continue;
      uct_tl_resource_desc_t* tls = nullptr;
      unsigned num_tls = 0;
      if (uct_md_query_tl_resources(md, &tls, &num_tls) == UCS_OK) {
        for (unsigned t = 0; t < num_tls; ++t) devices[tls[t].tl_name].insert(tls[t].dev_name);
        uct_release_tl_resource_list(tls);
      }
      uct_md_close(md);
    }
  }
  uct_release_component_list(components);
  std::string out;
  for (const auto& [tl, devs] : devices) {
    std::string list;
    for (const auto& d : devs) list += (list.empty() ? "" : ", ") + d;
    out += (out.empty() ? "" : "; ") + tl + " (" + list + ")";
  }
  return out.empty() ? "none" : out;
}

std::string io_uring_state() {
  auto batch = detail::UringBatch::create(8);
  return batch ? "available" : "unavailable: " + batch.error().message;
}

std::string direct_io_state(const std::filesystem::path& dir) {
  auto file = DiskAllocator(dir).allocate(4096);
  if (!file) return "cannot test: " + file.error().message;
  (void)file->unlink();
  return file->direct_io() ? "yes" : "no (I/O is buffered here)";
}

std::string memlock_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return "unknown";
  if (r.rlim_cur == RLIM_INFINITY) return "unlimited";
  return human_bytes(r.rlim_cur) + " (io_uring fixed buffers beyond it fail; raise: ulimit -l)";
}

bool loadable(const char* name) {
  void* h = dlopen(name, RTLD_LAZY | RTLD_LOCAL);
  if (h != nullptr) dlclose(h);
  return h != nullptr;
}

std::string library_state(const char* name) {
  return std::string(loadable(name) ? "found (" : "not found (") + name + ")";
}

#if KVBM_HAVE_CUDA
// "Gen5" for sysfs's "32.0 GT/s PCIe".
std::string pcie_generation(const std::string& speed) {
  static const std::pair<const char*, const char*> kGens[] = {
      {"2.5 GT/s", "Gen1"},  {"5.0 GT/s", "Gen2"},  {"8.0 GT/s", "Gen3"},
      {"16.0 GT/s", "Gen4"}, {"32.0 GT/s", "Gen5"}, {"64.0 GT/s", "Gen6"}};
  for (const auto& [rate, gen] : kGens) {
    if (speed.rfind(rate, 0) == 0) return gen;
  }
  return speed;
}

// "PCIe Gen5 x16 (max Gen5 x16)" from sysfs for a PCI address like 0000:1b:00.0.
std::string pcie_link(const std::string& address) {
  const std::filesystem::path dev = "/sys/bus/pci/devices/" + address;
  auto read = [&](const char* name) {
    std::ifstream in(dev / name);
    std::string v;
    std::getline(in, v);
    return v;
  };
  const std::string speed = read("current_link_speed"), width = read("current_link_width");
  if (speed.empty() || width.empty()) return "PCIe link unknown";
  std::string link = "PCIe " + pcie_generation(speed) + " x" + width + " (max " +
                     pcie_generation(read("max_link_speed")) + " x" + read("max_link_width") + ")";
  // -1 where the machine has one node (or does not say).
  const std::string node = read("numa_node");
  if (!node.empty() && node != "-1") link += ", NUMA node " + node;
  return link;
}

// The engine the transfer engine measures on GPU `ordinal` for each chunk class, each way:
// "pinned -> GPU 16K kernel, 64K kernel, 256K batch, 2M batch; GPU -> pinned ...".
std::string host_engines(TransferEngine& engine, int ordinal) {
  std::string out;
  for (bool to_device : {true, false}) {
    out += to_device ? "pinned -> GPU" : "; GPU -> pinned";
    const char* sep = " ";
    for (size_t kib : {16, 64, 256, 2048}) {
      auto e = engine.cuda_host_engine(ordinal, to_device, kib << 10);
      if (!e) return e.error().message;
      out += sep + (kib < 1024 ? std::to_string(kib) + "K " : std::to_string(kib >> 10) + "M ") +
             to_string(*e);
      sep = ", ";
    }
  }
  return out;
}
#endif

void add_gpus(Table& t) {
  // CUDA says "driver version is insufficient" when there is no driver at all.
  if (built_with_cuda() && !loadable("libcuda.so.1")) {
    t.add({"GPUs", "none: no NVIDIA driver (libcuda.so.1 not found)"});
    return;
  }
  auto gpus = cuda_device_count();
  t.add({"GPUs", gpus ? std::to_string(*gpus) : gpus.error().message});
#if KVBM_HAVE_CUDA
  std::unique_ptr<TransferEngine> engine;  // made for the first GPU, measures each
  for (int i = 0; gpus && i < *gpus; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    char bus[32];
    std::snprintf(bus, sizeof bus, "%04x:%02x:%02x.0", prop.pciDomainID, prop.pciBusID,
                  prop.pciDeviceID);
    t.add(
        {"GPU " + std::to_string(i), std::string(prop.name) + ", " +
                                         human_bytes(prop.totalGlobalMem / (1 << 20) * (1 << 20)) +
                                         ", " + bus + ", " + pcie_link(bus)});
    if (!engine) {
      auto made = TransferEngine::create();
      if (made) engine = std::move(*made);
    }
    if (engine) t.add({"GPU " + std::to_string(i) + " host engines", host_engines(*engine, i)});
  }
#endif
}

}  // namespace

int run_info(const InfoOptions& options) {
  const std::filesystem::path dir =
      options.dir.empty() ? std::filesystem::temp_directory_path() : options.dir;
  Table t({"item", "value"});
  t.add({"kvbm", std::string(version()) + (built_with_cuda() ? ", built with CUDA" : ", no CUDA")});
  t.add({"UCX", ucp_get_version_string()});
  t.add({"UCX transports", ucx_transports()});
  t.add({"io_uring", io_uring_state()});
  t.add({"O_DIRECT in " + dir.string(), direct_io_state(dir)});
  t.add({"memlock limit", memlock_limit()});
  t.add({"cuFile (GDS)", library_state("libcufile.so.0")});
  add_gpus(t);
  t.add({"CPU cores", std::to_string(sysconf(_SC_NPROCESSORS_ONLN))});
  t.add({"page size", std::to_string(sysconf(_SC_PAGESIZE))});
  if (!options.json) {
    t.print(std::cout);
    return 0;
  }
  nlohmann::ordered_json items = nlohmann::ordered_json::object();
  for (const auto& row : t.rows()) items[row[0]] = row[1];
  const nlohmann::ordered_json j = {
      {"command", "kvbm info"}, {"kvbm", version()}, {"items", items}};
  std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}

}  // namespace kvbm::tools
