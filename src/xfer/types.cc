#include "kvbm/xfer/types.h"

#include "kvbm/xfer/agent.h"

namespace kvbm::xfer {

const char* to_string(MemType type) {
  switch (type) {
    case MemType::Dram:
      return "DRAM";
    case MemType::Vram:
      return "VRAM";
    case MemType::File:
      return "FILE";
    case MemType::Unknown:
      return "UNKNOWN";
  }
  return "UNKNOWN";
}

const char* to_string(Op op) {
  return op == Op::Read ? "READ" : "WRITE";
}

const char* to_string(XferState state) {
  switch (state) {
    case XferState::Idle:
      return "Idle";
    case XferState::InProgress:
      return "InProgress";
    case XferState::Done:
      return "Done";
    case XferState::Error:
      return "Error";
  }
  return "Unknown";
}

}  // namespace kvbm::xfer
