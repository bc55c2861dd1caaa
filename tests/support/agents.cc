#include "support/agents.h"

#include <gtest/gtest.h>

#include "support/test_support.h"

namespace kvbm::testing {

std::unique_ptr<xfer::Agent> make_agent(const std::string& name, xfer::AgentConfig config) {
  auto a = xfer::Agent::create(name, std::move(config));
  EXPECT_TRUE(a.ok()) << a.error().to_string();
  return a.ok() ? std::move(*a) : nullptr;
}

std::unique_ptr<xfer::Agent> make_host_agent(const std::string& name, xfer::AgentConfig config) {
  config.add_cuda_if_gpu = false;
  return make_agent(name, std::move(config));
}

SystemStorage make_buffer(size_t size, uint64_t seed) {
  auto s = SystemAllocator().allocate(size);
  EXPECT_TRUE(s.ok()) << s.error().to_string();  // a small test buffer: the machine is broken
  fill_pattern(s->data(), size, seed);
  return std::move(*s);
}

xfer::DescList dram(uint64_t addr, uint64_t len) {
  return xfer::DescList(xfer::MemType::Dram, {xfer::Desc{addr, len, 0}});
}

}  // namespace kvbm::testing
