// Why the remote layer exists, end to end in two processes:
//   A (prefill) allocates host memory, fills it, registers it with its agent, listens
//     on its metadata side channel and publishes a RemoteDescriptor (with a
//     notification) there under a key;
//   B (decode) is told only A's host, port and the key: it fetches the descriptor and
//     A's agent metadata over the side channel, READs the bytes straight from A's
//     memory, and the notification tells A that B has them.
// Run: build/default/examples/remote_read     (exit status 0 when every byte matched)
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include <kvbm/remote.h>
#include <kvbm/storage.h>
#include <kvbm/xfer.h>

using namespace std::chrono_literals;

namespace {

constexpr size_t kBytes = 16 << 20;

void fill(void* p, size_t n) {
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(i * 131 + 7);
}

int die(const char* who, const kvbm::Error& e) {
  std::fprintf(stderr, "%s: %s\n", who, e.to_string().c_str());
  return 1;
}

// B: fetch the descriptor published under `key` at host:port (A's metadata comes with
// it), read what it names into local memory and check it.
int decode_worker(const std::string& host, uint16_t port, const std::string& key) {
  auto agent = kvbm::xfer::Agent::create("decode-worker");
  if (!agent) return die("B", agent.error());
  auto desc = kvbm::fetch_descriptor(**agent, host, port, key);
  if (!desc) return die("B", desc.error());
  auto local = kvbm::SystemAllocator().allocate(desc->size());
  if (!local) return die("B", local.error());
  if (auto st = kvbm::register_with_agent(*local, **agent); !st) return die("B", st.error());

  auto local_desc = kvbm::remote_storage_of(*local)->to_desc_list();
  auto req = (*agent)->create_request(kvbm::xfer::Op::Read, local_desc, desc->to_desc_list(),
                                      desc->agent_name(), desc->notif());
  if (!req) return die("B", req.error());
  if (auto st = (*req)->post(); !st) return die("B", st.error());
  if (auto st = (*req)->wait(30s); !st) return die("B", st.error());

  std::vector<unsigned char> expected(desc->size());
  fill(expected.data(), expected.size());
  bool same = std::memcmp(local->data(), expected.data(), expected.size()) == 0;
  std::printf("B: read %zu bytes from agent '%s': %s\n", desc->size(), desc->agent_name().c_str(),
              same ? "every byte matches" : "MISMATCH");
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[1]) == "decode") {
    return decode_worker(argv[2], static_cast<uint16_t>(std::stoi(argv[3])), argv[4]);
  }

  // A: the prefill worker owns the blocks.
  auto agent = kvbm::xfer::Agent::create("prefill-worker");
  if (!agent) return die("A", agent.error());
  auto blocks = kvbm::SystemAllocator().allocate(kBytes);
  if (!blocks) return die("A", blocks.error());
  fill(blocks->data(), kBytes);
  if (auto st = kvbm::register_with_agent(*blocks, **agent); !st) return die("A", st.error());
  auto port = (*agent)->listen("127.0.0.1", 0);
  if (!port) return die("A", port.error());

  auto desc = kvbm::remote_descriptor_of(*blocks);
  if (!desc) return die("A", desc.error());
  desc->set_notif("blocks 0-63 received");
  const std::string key = "prefill-worker/blocks-0-63";
  if (auto st = kvbm::publish_descriptor(**agent, key, *desc); !st) return die("A", st.error());
  std::printf("A: published under '%s' at 127.0.0.1:%u: %s\n", key.c_str(), unsigned{*port},
              desc->to_json().c_str());

  // B is another process (this program again, in its "decode" role), told only where A
  // listens and the key.
  std::fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    execl("/proc/self/exe", argv[0], "decode", "127.0.0.1", std::to_string(*port).c_str(),
          key.c_str(), nullptr);
    _exit(127);
  }

  std::vector<kvbm::xfer::Notification> got;
  for (auto until = std::chrono::steady_clock::now() + 30s;
       got.empty() && std::chrono::steady_clock::now() < until;) {
    got = (*agent)->get_notifs();
    std::this_thread::sleep_for(1ms);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (got.empty()) return die("A", kvbm::err(kvbm::ErrorCode::Timeout, "no notification from B"));
  std::printf("A: notification from '%s': \"%s\"\n", got[0].agent.c_str(), got[0].message.c_str());
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                  got[0].agent == "decode-worker" && got[0].message == "blocks 0-63 received";
  return ok ? 0 : 1;
}
