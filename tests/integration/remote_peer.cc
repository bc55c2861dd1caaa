// Process B of the remote end-to-end test (tests/integration/remote_e2e_test.cc): told
// only where process A listens and under which key A published a RemoteDescriptor, it
// fetches the descriptor and A's agent metadata over A's side channel, READs the
// described bytes into its own registered memory (delivering the descriptor's
// notification), and checks every byte. Commands on stdin, one per line, replies on stdout:
//   read bytes|json HOST PORT KEY SEED POFF [reload]
//        -> OK <size> | BAD <index> | ERR <error>
//           (bytes: the item is the descriptor's to_bytes(), fetched with
//            fetch_descriptor; json: its to_json(), fetched with Agent::fetch_published;
//            reload: load A's metadata afresh even if B knows A; the bytes must equal
//            pattern SEED starting at pattern offset POFF)
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

// The JSON form through the agent's own calls: the item, then A's metadata if needed.
Result<RemoteDescriptor> fetch_json_descriptor(xfer::Agent& agent, const std::string& host,
                                               uint16_t port, const std::string& key, bool reload) {
  auto text = agent.fetch_published(host, port, key, 30s);
  if (!text) return text.error();
  auto desc = RemoteDescriptor::from_json(*text);
  if (!desc) return desc.error();
  if (reload || !agent.has_remote(desc->agent_name())) {
    auto peer = agent.fetch_remote_metadata(host, port, 30s);
    if (!peer) return peer.error();
  }
  return desc;
}

std::string read_command(xfer::Agent& agent, std::istringstream& in) {
  std::string form, host, key, flag;
  unsigned port = 0;
  uint64_t seed = 0;
  size_t poff = 0;
  if (!(in >> form >> host >> port >> key >> seed >> poff) || port > UINT16_MAX) return "ERR usage";
  in >> flag;
  const bool reload = flag == "reload";
  auto desc = form == "json"
                  ? fetch_json_descriptor(agent, host, static_cast<uint16_t>(port), key, reload)
                  : fetch_descriptor(agent, host, static_cast<uint16_t>(port), key, 30s,
                                     reload ? OwnerMetadata::Reload : OwnerMetadata::LoadIfUnknown);
  if (!desc) return "ERR " + desc.error().to_string();
  if (desc->size() == 0 || desc->size() > (size_t{1} << 30)) return "ERR size";

  auto local = SystemAllocator().allocate(desc->size());
  if (!local) return "ERR " + local.error().to_string();
  if (auto st = register_with_agent(*local, agent); !st) return "ERR " + st.error().to_string();
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
