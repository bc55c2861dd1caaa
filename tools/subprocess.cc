#include "subprocess.h"

#include "cleanup.h"

namespace kvbm::tools {

Result<Subprocess> spawn_child(const std::vector<std::string>& argv, Subprocess::Options options) {
  install_signal_cleanup();
  options.die_with_parent = true;
  options.track = kill_on_signal;
  options.untrack = forget_on_signal;
  return Subprocess::spawn(argv, options);
}

}  // namespace kvbm::tools
