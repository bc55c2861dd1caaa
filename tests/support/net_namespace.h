// A second host for tests: a network namespace this test makes, joined to the test's own
// namespace by a link with addresses of its own (from 198.18.0.0/15, the range set aside
// for network tests), so that bytes between the two cross a network device (UCX over TCP)
// rather than loopback or shared memory. The link is a veth pair, or two TAP devices
// joined by a LinkEmulator (link_emulator.h) where a test wants delay and loss. Removed on
// destruction. Needs root and iproute2; tests skip with the reason when either is missing.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "support/link_emulator.h"

namespace kvbm::testing {

class NetNamespace {
 public:
  // Why namespaces cannot be made here, or empty when they can.
  static std::string unavailable();

  enum class Link { Veth, Emulated };
  explicit NetNamespace(Link link = Link::Veth);
  ~NetNamespace();
  NetNamespace(const NetNamespace&) = delete;
  NetNamespace& operator=(const NetNamespace&) = delete;

  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }
  const std::string& host_address() const { return host_addr_; }  // our end of the veth
  const std::string& peer_address() const { return peer_addr_; }  // the namespace's end
  const std::string& host_device() const { return host_dev_; }
  const std::string& peer_device() const { return peer_dev_; }
  // `argv` run inside the namespace (for ChildProcess).
  std::vector<std::string> exec(const std::vector<std::string>& argv) const;
  // Takes our end of the link down (a partition: packets vanish, nothing is reset) or up
  // (returning once the namespace's end is up again too).
  bool set_link(bool up) const;
  // The same inside the namespace: its end of the link down (the peer's host loses its
  // network) or up (returning once it is up).
  bool set_peer_link(bool up) const;
  // The emulated link's frame forwarder (delay and loss), or null for a veth pair.
  LinkEmulator* emulator() const { return emulator_.get(); }
  // Why the link could not be made, when !ok().
  const std::string& why_not() const { return why_not_; }

 private:
  bool ok_ = false;
  std::string name_, host_dev_, peer_dev_, host_addr_, peer_addr_, why_not_;
  std::unique_ptr<LinkEmulator> emulator_;
};

}  // namespace kvbm::testing
