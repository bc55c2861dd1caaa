#include "support/net_namespace.h"

#include <unistd.h>

#include <atomic>
#include <chrono>

#include "common/subprocess.h"

namespace kvbm::testing {
namespace {

constexpr const char* kIp = "/usr/sbin/ip";

// `command` through the shell; its output (stdout and stderr) when `output` is given, else
// none. Whether it exited 0; a command still running after a minute is killed and fails.
bool run(const std::string& command, std::string* output = nullptr) {
  detail::Subprocess::Options options;
  options.die_with_parent = false;
  options.pipe_stdout = output != nullptr;
  options.quiet_stderr = output == nullptr;
  auto p = detail::Subprocess::spawn({"/bin/sh", "-c", command + (output ? " 2>&1" : "")}, options);
  if (!p) {
    if (output != nullptr) *output = p.error().to_string();
    return false;
  }
  if (output != nullptr) {
    auto all = p->read_all(std::chrono::minutes(1));
    *output = all ? *all : all.error().to_string();
  }
  auto status = p->wait(std::chrono::minutes(1));
  if (!status) p->kill_now();
  return status && *status == 0;
}

std::atomic<int> counter{0};

}  // namespace

std::string NetNamespace::unavailable() {
  if (geteuid() != 0) return "network namespaces need root";
  if (access(kIp, X_OK) != 0) return "iproute2's ip is not installed";
  const std::string probe = "kvbm-probe-" + std::to_string(getpid());
  if (!run(std::string(kIp) + " netns add " + probe)) return "ip netns add is refused here";
  run(std::string(kIp) + " netns del " + probe);
  return {};
}

NetNamespace::NetNamespace(Link link) {
  // Unique per process and instance, so tests running at once never share a name or subnet.
  const int n = counter++;
  const unsigned index = (static_cast<unsigned>(getpid()) * 8 + static_cast<unsigned>(n)) % 32768;
  const std::string id = std::to_string(getpid() % 100000) + "x" + std::to_string(n);
  name_ = "kvbm-" + id;
  host_dev_ = "kv" + id + "a";
  peer_dev_ = "kv" + id + "b";
  // A /30 of 198.18.0.0/15 each: .1 ours, .2 the namespace's.
  const unsigned base = index * 4;
  const std::string net =
      "198." + std::to_string(18 + (base >> 16)) + "." + std::to_string((base >> 8) & 255) + ".";
  host_addr_ = net + std::to_string((base & 255) + 1);
  peer_addr_ = net + std::to_string((base & 255) + 2);
  const std::string ip = kIp;
  if (!run(ip + " netns add " + name_)) {
    why_not_ = "ip netns add " + name_ + " failed";
    return;
  }
  if (link == Link::Emulated) {
    emulator_ = LinkEmulator::create(host_dev_, peer_dev_, &why_not_);
    if (!emulator_) return;
  } else if (!run(ip + " link add " + host_dev_ + " type veth peer name " + peer_dev_)) {
    why_not_ = "ip link add " + host_dev_ + " type veth failed";
    return;
  }
  ok_ = run(ip + " link set " + peer_dev_ + " netns " + name_) &&
        run(ip + " addr add " + host_addr_ + "/30 dev " + host_dev_) &&
        run(ip + " link set " + host_dev_ + " up") &&
        run(ip + " -n " + name_ + " addr add " + peer_addr_ + "/30 dev " + peer_dev_) &&
        run(ip + " -n " + name_ + " link set " + peer_dev_ + " up") &&
        run(ip + " -n " + name_ + " link set lo up") && set_link(true);
  if (!ok_) why_not_ = "setting up the link of " + name_ + " failed";
}

NetNamespace::~NetNamespace() {
  if (emulator_) {
    emulator_.reset();  // its TAP devices go with their file descriptors
  } else {
    run(std::string(kIp) + " link del " + host_dev_);  // takes its peer end with it
  }
  run(std::string(kIp) + " netns del " + name_);
}

std::vector<std::string> NetNamespace::exec(const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {kIp, "netns", "exec", name_};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

bool NetNamespace::set_peer_link(bool up) const {
  return run(std::string(kIp) + " -n " + name_ + " link set " + peer_dev_ +
             (up ? " up" : " down")) &&
         (!up || set_link(true));
}

bool NetNamespace::set_link(bool up) const {
  if (!run(std::string(kIp) + " link set " + host_dev_ + (up ? " up" : " down"))) return false;
  if (!up) return true;
  // The namespace's end comes up a moment later (carrier, then operstate), and UCX refuses
  // a device that is not up yet: wait for it, a bounded while. (A TAP device's operstate
  // stays UNKNOWN: its carrier is what counts.)
  const std::string check = std::string(kIp) + " -n " + name_ + " link show " + peer_dev_ +
                            (emulator_ ? " | grep -q 'LOWER_UP'" : " | grep -q 'state UP'");
  for (int i = 0; i < 500; ++i) {
    if (run(check)) return true;
    usleep(10000);
  }
  return false;
}

}  // namespace kvbm::testing
