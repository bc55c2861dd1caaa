// The second agent of the GPU two-process tests (tests/gpu/cuda_backend_gpu_test.cc): owns one
// registered VRAM buffer filled with a known pattern, serves its metadata on 127.0.0.1,
// and answers commands on stdin (one per line; replies on stdout):
//   check OFF LEN SEED POFF   -> OK | BAD <index>     (VRAM bytes vs pattern SEED at POFF)
//   fill SEED | zero          -> OK
//   expect MSG TIMEOUT_MS [OFF LEN SEED POFF]
//                             -> OK | BAD <index> | TIMEOUT   (checks bytes on arrival)
//   notifs                    -> NOTIFS <agent>:<msg> ...     (and clears them)
//   quit
// Usage: gpu_peer NAME BYTES SEED [staged]   ("staged": its CUDA backend is created with
// staged=1). Prints READY <port> <vram addr> <device>, or ERR <why> and exits 1.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/pattern.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

#if KVBM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

using namespace kvbm;

int main(int argc, char** argv) {
#if !KVBM_HAVE_CUDA
  (void)argc;
  (void)argv;
  std::cout << "ERR built without CUDA" << std::endl;
  return 1;
#else
  if (argc < 4) return 2;
  const std::string name = argv[1];
  const size_t bytes = std::stoull(argv[2]);
  const uint64_t seed = std::stoull(argv[3]);
  const bool staged = argc > 4 && std::string(argv[4]) == "staged";
  auto fail = [](const std::string& why) {
    std::cout << "ERR " << why << std::endl;
    return 1;
  };
  xfer::AgentConfig config;
  config.add_cuda_if_gpu = !staged;
  auto agent = xfer::Agent::create(name, config);
  if (!agent) return fail(agent.error().to_string());
  if (staged) {
    if (auto st = (*agent)->create_backend("CUDA", {{"staged", "1"}}); !st)
      return fail(st.error().to_string());
  }
  auto vram = DeviceAllocator(0).allocate(bytes);
  if (!vram) return fail(vram.error().to_string());
  std::vector<char> host(bytes);
  auto fill = [&](uint64_t s) {
    detail::fill_pattern(host.data(), bytes, s);
    return cudaMemcpy(vram->data(), host.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess;
  };
  if (!fill(seed)) return fail("cudaMemcpy");
  if (auto st = register_with_agent(*vram, **agent); !st) return fail(st.error().to_string());
  auto port = (*agent)->listen("127.0.0.1", 0);
  if (!port) return fail(port.error().to_string());
  std::cout << "READY " << *port << " " << vram->addr() << " " << vram->ordinal() << std::endl;

  std::deque<xfer::Notification> inbox;
  auto pull = [&] {
    for (auto& n : (*agent)->get_notifs()) inbox.push_back(std::move(n));
  };
  auto check = [&](std::istringstream& in) -> std::string {
    size_t off = 0, len = 0, poff = 0;
    uint64_t s = 0;
    in >> off >> len >> s >> poff;
    if (off + len > bytes || len == 0) return "BAD range";
    std::vector<char> out(len);
    cudaError_t e =
        cudaMemcpy(out.data(), static_cast<char*>(vram->data()) + off, len, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return std::string("BAD cudaMemcpy ") + cudaGetErrorString(e);
    size_t bad = detail::find_pattern_mismatch(out.data(), len, s, poff);
    return bad == SIZE_MAX ? "OK" : "BAD " + std::to_string(bad);
  };

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    std::string reply;
    if (cmd == "check") {
      reply = check(in);
    } else if (cmd == "fill") {
      uint64_t s = 0;
      in >> s;
      reply = fill(s) ? "OK" : "ERR cudaMemcpy";
    } else if (cmd == "zero") {
      reply = cudaMemset(vram->data(), 0, bytes) == cudaSuccess && cudaDeviceSynchronize() == 0
                  ? "OK"
                  : "ERR cudaMemset";
    } else if (cmd == "expect") {
      std::string msg;
      long timeout_ms = 0;
      in >> msg >> timeout_ms;
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
      reply = "TIMEOUT";
      while (std::chrono::steady_clock::now() < until) {
        pull();
        auto it =
            std::find_if(inbox.begin(), inbox.end(), [&](auto& n) { return n.message == msg; });
        if (it != inbox.end()) {
          inbox.erase(it);
          reply = in.rdbuf()->in_avail() > 0 ? check(in) : "OK";  // checked the moment it arrived
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    } else if (cmd == "notifs") {
      pull();
      reply = "NOTIFS";
      for (auto& n : inbox) reply += " " + n.agent + ":" + n.message;
      inbox.clear();
    } else if (cmd == "quit") {
      break;
    } else {
      reply = "ERR unknown command " + cmd;
    }
    std::cout << reply << std::endl;
  }
  return 0;
#endif
}
