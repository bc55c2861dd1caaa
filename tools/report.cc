#include "report.h"

#include <unistd.h>

#include <fstream>
#include <iostream>

#include <ucp/api/ucp.h>

#include "kvbm/cuda.h"
#include "kvbm/version.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvbm::tools {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
      return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

#if KVBM_HAVE_CUDA
// "12.4" from CUDA's 12040.
std::string cuda_version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}
#endif

}  // namespace

Json machine_json() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  Json j = {{"hostname", host},
            {"cpu", cpu_model()},
            {"cpu_cores", sysconf(_SC_NPROCESSORS_ONLN)},
            {"gpus", Json::array()}};
  auto gpus = cuda_device_count();
  if (!gpus) {
    j["gpus_note"] = gpus.error().to_string();
    return j;
  }
#if KVBM_HAVE_CUDA
  for (int i = 0; i < *gpus; ++i) {
    cudaDeviceProp prop{};
    j["gpus"].push_back(cudaGetDeviceProperties(&prop, i) == cudaSuccess ? prop.name : "unknown");
  }
#endif
  return j;
}

Json versions_json() {
  Json j = {{"kvbm", version()}, {"ucx", ucp_get_version_string()}};
  j["cuda_runtime"] = nullptr;
  j["cuda_driver"] = nullptr;
#if KVBM_HAVE_CUDA
  int v = 0;
  if (cudaRuntimeGetVersion(&v) == cudaSuccess) j["cuda_runtime"] = cuda_version(v);
  if (cudaDriverGetVersion(&v) == cudaSuccess && v > 0) j["cuda_driver"] = cuda_version(v);
  cudaGetLastError();
#endif
  return j;
}

void print_json(const Json& j) {
  std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

int fail(std::string_view command, const Error& e) {
  std::cerr << "kvbm " << command << ": " << e.to_string() << "\n";
  return 1;
}

void progress(const std::string& line) {
  static const bool tty = isatty(STDERR_FILENO) == 1;
  if (tty) std::cerr << line << std::endl;
}

StreamTable::StreamTable(std::ostream& out, std::vector<std::string> header,
                         std::vector<size_t> widths)
    : out_(out), header_(std::move(header)), widths_(std::move(widths)) {
  widths_.resize(header_.size(), 0);
  for (size_t i = 0; i < header_.size(); ++i) widths_[i] = std::max(widths_[i], header_[i].size());
}

void StreamTable::line(const std::vector<std::string>& row) {
  size_t owed = 0;  // how far a wide cell pushed this row right
  for (size_t i = 0; i < widths_.size(); ++i) {
    const std::string cell = i < row.size() ? row[i] : "";
    out_ << cell;
    if (i + 1 == widths_.size()) break;
    const size_t want = widths_[i] + 2;
    const size_t used = cell.size() + owed;
    out_ << std::string(used < want ? want - used : 2, ' ');
    owed = used < want ? 0 : used + 2 - want;
  }
  out_ << std::endl;  // each row as it finishes, also into a pipe
}

void StreamTable::add(const std::vector<std::string>& row) {
  if (!started_) {
    line(header_);
    size_t total = 0;
    for (size_t w : widths_) total += w + 2;
    out_ << std::string(total - 2, '-') << '\n';
    started_ = true;
  }
  line(row);
}

}  // namespace kvbm::tools
