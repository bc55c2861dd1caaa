// Agents and buffers for the agent-layer tests (tests/unit, tests/integration): each helper
// records a test failure, naming the cause, where it cannot make what it was asked for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

namespace kvbm::testing {

// An agent made with `config`; nullptr (and a test failure) when it cannot be made.
std::unique_ptr<xfer::Agent> make_agent(const std::string& name, xfer::AgentConfig config = {});
// The same without the CUDA backend a GPU would add (add_cuda_if_gpu off): for tests of
// the host paths, which tests/gpu covers with a GPU.
std::unique_ptr<xfer::Agent> make_host_agent(const std::string& name,
                                             xfer::AgentConfig config = {});

// `size` bytes of host memory filled with fill_pattern(`seed`).
SystemStorage make_buffer(size_t size, uint64_t seed);

// One DRAM descriptor.
xfer::DescList dram(uint64_t addr, uint64_t len);

}  // namespace kvbm::testing
