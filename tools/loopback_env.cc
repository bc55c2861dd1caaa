#include "loopback_env.h"

#include <cstdlib>
#include <cstring>

namespace kvbm::tools {

void use_loopback_env(const char* tls) {
  if (tls != nullptr) setenv("UCX_TLS", tls, 1);
  const char* chosen = std::getenv("UCX_TLS");
  // Only where TCP was asked for: UCX's own choice (unset) stays UCX's, RDMA devices too.
  const bool tcp = chosen != nullptr && std::strstr(chosen, "tcp") != nullptr;
  if (tcp && std::getenv("UCX_NET_DEVICES") == nullptr) setenv("UCX_NET_DEVICES", "lo", 1);
}

}  // namespace kvbm::tools
