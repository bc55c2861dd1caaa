// `kvbm demo-peer` (hidden): the second process of `kvbm demo`, the "decode" worker that
// receives KV blocks. It allocates a layer-separate layout in host memory plus a scratch
// buffer for the parent's ceiling measurement, registers both with agent "decode", serves
// the agent's metadata on 127.0.0.1, and prints one line on stdout:
//   READY <side-channel port> <scratch address> <hex of the layout's to_bytes()>
// It then waits for the notification "kvbm demo: <N> blocks", checks every block (block d
// must hold the parent's block reversed(N, d)) and prints
//   VERIFIED ok | VERIFIED CORRUPT block <d> (...) | ERROR <message>
// then waits for "quit" or the end of stdin. (--corrupt-block N, a test hook, flips a byte
// of block N first.) It exits by itself when stdin closes (the
// parent is gone) or after --timeout-s seconds without the notification.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>

#include "commands.h"
#include "demo_blocks.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

namespace kvbm::tools {
namespace {

using Clock = std::chrono::steady_clock;

// What arrived on stdin within `timeout`.
enum class Input { Nothing, Quit, Closed };

Input poll_stdin(std::chrono::milliseconds timeout, std::string& pending) {
  pollfd p{STDIN_FILENO, POLLIN, 0};
  int n = poll(&p, 1, static_cast<int>(timeout.count()));
  if (n < 0 && errno == EINTR) return Input::Nothing;
  if (n <= 0) return n < 0 ? Input::Closed : Input::Nothing;
  char chunk[256];
  ssize_t got = read(STDIN_FILENO, chunk, sizeof chunk);
  if (got < 0 && errno == EINTR) return Input::Nothing;
  if (got <= 0) return Input::Closed;
  pending.append(chunk, static_cast<size_t>(got));
  return pending.find("quit\n") != std::string::npos ? Input::Quit : Input::Nothing;
}

int fail(const std::string& what) {
  std::cout << "ERROR " << what << std::endl;
  return 1;
}

}  // namespace

int run_demo_peer(const DemoPeerOptions& o) {
  auto agent = xfer::Agent::create("decode");
  if (!agent) return fail(agent.error().to_string());
  // Declared after the agent: registrations are released before it.
  auto layout = Layout::allocate(demo::block_config(o.blocks), LayoutKind::LayerSeparate,
                                 SystemAllocator(), LayerOrder::BlockMajor);
  if (!layout) return fail(layout.error().to_string());
  for (size_t r = 0; r < layout->num_regions(); ++r) {
    if (auto st = demo::zero_region(layout->region(r)); !st) return fail(st.error().to_string());
  }
  if (auto st = layout->register_with_agent(**agent); !st) return fail(st.error().to_string());
  auto scratch = SystemAllocator().allocate(o.blocks * demo::block_bytes());
  if (!scratch) return fail(scratch.error().to_string());
  if (auto st = (*agent)->register_storage(*scratch); !st) return fail(st.error().to_string());
  auto bytes = layout->to_bytes();
  if (!bytes) return fail(bytes.error().to_string());
  auto port = (*agent)->listen("127.0.0.1", 0);
  if (!port) return fail(port.error().to_string());
  std::cout << "READY " << *port << " " << scratch->addr() << " " << demo::to_hex(*bytes)
            << std::endl;

  const std::string expected = "kvbm demo: " + std::to_string(o.blocks) + " blocks";
  const auto deadline = Clock::now() + std::chrono::seconds(o.timeout_s);
  std::string pending;
  bool arrived = false;
  while (!arrived) {
    if (Clock::now() > deadline) {
      return fail("no notification '" + expected + "' within " + std::to_string(o.timeout_s) +
                  " s");
    }
    switch (poll_stdin(std::chrono::milliseconds(2), pending)) {
      case Input::Closed:
        return 1;  // the parent is gone: nobody to report to
      case Input::Quit:
        return 0;
      case Input::Nothing:
        break;
    }
    for (const auto& n : (*agent)->get_notifs()) {
      if (n.message == expected) arrived = true;
    }
  }
  // Bytes the parent WROTE were copied in by our progress thread; progress() makes them
  // visible to this thread.
  (*agent)->progress();
  if (o.corrupt_block < o.blocks) {  // the test hook: one flipped byte must be caught
    const MemoryRegion m = layout->memory_region_unchecked(o.corrupt_block, 0, 0);
    static_cast<char*>(layout->region(m.region).data())[m.offset] ^= 1;
  }
  auto verdict = demo::check_blocks(*layout, o.seed,
                                    [n = o.blocks](size_t d) { return demo::reversed(n, d); });
  if (!verdict) return fail(verdict.error().to_string());
  std::cout << "VERIFIED " << *verdict << std::endl;

  const auto quit_by = Clock::now() + std::chrono::seconds(o.timeout_s);
  while (Clock::now() < quit_by) {
    if (poll_stdin(std::chrono::milliseconds(100), pending) != Input::Nothing) break;
  }
  return *verdict == "ok" ? 0 : 1;
}

}  // namespace kvbm::tools
