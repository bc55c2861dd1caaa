// Process B of the remote end-to-end test (tests/integration/remote_e2e_test.cc): given
// a RemoteDescriptor from process A, it fetches A's agent metadata over the side channel,
// READs the described bytes into its own registered memory (delivering the descriptor's
// notification), and checks every byte. Commands on stdin, one per line, replies on stdout:
//   read bytes|json HEX PORT SEED POFF
//        -> OK <size> | BAD <index> | ERR <error>
//           (HEX: the descriptor's to_bytes() or to_json(), hex-encoded; the bytes must
//            equal pattern SEED starting at pattern offset POFF)
//   quit
// Usage: remote_peer NAME
#include <cstdint>
#include <iostream>
#include <sstream>
#include <string>

#include "common/pattern.h"
#include "kvbm/remote.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

using namespace kvbm;
using namespace std::chrono_literals;

namespace {

std::optional<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (char c : hex.substr(i, 2)) {
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else
        return std::nullopt;
    }
    out += static_cast<char>(v);
  }
  return out;
}

std::string read_command(xfer::Agent& agent, std::istringstream& in) {
  std::string form, hex;
  unsigned port = 0;
  uint64_t seed = 0;
  size_t poff = 0;
  if (!(in >> form >> hex >> port >> seed >> poff)) return "ERR usage";
  auto text = from_hex(hex);
  if (!text) return "ERR bad hex";
  auto desc =
      form == "json" ? RemoteDescriptor::from_json(*text) : RemoteDescriptor::from_bytes(*text);
  if (!desc) return "ERR " + desc.error().to_string();
  if (desc->size() == 0 || desc->size() > (size_t{1} << 30)) return "ERR size";

  auto local = SystemAllocator().allocate(desc->size());
  if (!local) return "ERR " + local.error().to_string();
  if (auto st = register_with_agent(*local, agent); !st) return "ERR " + st.error().to_string();
  // Fresh metadata for every read: A's registrations may have changed.
  if (auto peer = agent.fetch_remote_metadata("127.0.0.1", static_cast<uint16_t>(port)); !peer)
    return "ERR " + peer.error().to_string();
  auto req = agent.create_request(xfer::Op::Read, remote_storage_of(*local)->to_desc_list(),
                                  desc->to_desc_list(), desc->agent_name(), desc->notif());
  if (!req) return "ERR " + req.error().to_string();
  if (auto st = (*req)->post(); !st) return "ERR " + st.error().to_string();
  if (auto st = (*req)->wait(60s); !st) return "ERR " + st.error().to_string();
  agent.progress();  // the READ's bytes are visible to this thread from here on
  size_t bad = detail::find_pattern_mismatch(local->data(), local->size(), seed, poff);
  if (bad != SIZE_MAX) return "BAD " + std::to_string(bad);
  return "OK " + std::to_string(desc->size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  auto agent = xfer::Agent::create(argv[1]);
  if (!agent) {
    std::cout << "ERR " << agent.error().to_string() << std::endl;
    return 1;
  }
  std::cout << "READY" << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd == "quit") break;
    std::cout << (cmd == "read" ? read_command(**agent, in) : "ERR unknown command") << std::endl;
  }
  return 0;
}
