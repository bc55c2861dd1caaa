#include "kvbm/pool/events.h"

#include <utility>

namespace kvbm {

const char* to_string(Tier tier) {
  switch (tier) {
    case Tier::G1:
      return "G1";
    case Tier::G2:
      return "G2";
    case Tier::G3:
      return "G3";
  }
  return "unknown tier";
}

const char* to_string(EventKind kind) {
  return kind == EventKind::Stored ? "Stored" : "Removed";
}

EventCallback EventQueue::callback() {
  return [this](const Event& e) {
    std::lock_guard lock(mu_);
    events_.push_back(e);
  };
}

std::vector<Event> EventQueue::drain() {
  std::lock_guard lock(mu_);
  return std::exchange(events_, {});
}

}  // namespace kvbm
