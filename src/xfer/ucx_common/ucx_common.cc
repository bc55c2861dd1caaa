#include "xfer/ucx_common/ucx_common.h"

#include <ucs/debug/log_def.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

namespace kvbm::xfer::detail {
namespace {

Error ucx_call_failed(std::string_view call, ucs_status_t s) {
  return ucx_error(ErrorCode::Internal, call, s);
}

// One line per message, written with a single call so that lines of concurrent threads
// do not interleave. UCX has already applied its level filter before calling handlers.
ucs_log_func_rc_t log_to_stderr(const char* file, unsigned line, const char* /*function*/,
                                ucs_log_level_t level,
                                const ucs_log_component_config_t* /*component*/, const char* format,
                                va_list ap) {
  char message[1024];
  std::vsnprintf(message, sizeof(message), format, ap);
  const char* base = std::strrchr(file, '/');
  const char* level_name = level < UCS_LOG_LEVEL_LAST ? ucs_log_level_names[level] : "?";
  std::fprintf(stderr, "UCX %s %s:%u %s\n", level_name, base ? base + 1 : file, line, message);
  return UCS_LOG_FUNC_RC_STOP;  // the default handler would print it again, to stdout
}

}  // namespace

void route_ucx_log_to_stderr() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* file = std::getenv("UCX_LOG_FILE");
    if (file == nullptr || *file == '\0') ucs_log_push_handler(log_to_stderr);
  });
}

Status open_worker(uint64_t features, ucp_context_h* context, ucp_worker_h* worker,
                   std::string* address) {
  route_ucx_log_to_stderr();
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return ucx_call_failed("ucp_config_read", s);
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = features;
  params.mt_workers_shared = 0;
  ucs_status_t s = ucp_init(&params, config, context);
  ucp_config_release(config);
  if (s != UCS_OK) return ucx_call_failed("ucp_init", s);
  return create_worker(*context, worker, address);
}

Status create_worker(ucp_context_h context, ucp_worker_h* worker, std::string* address) {
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // every call is made under the backend's lock
  if (ucs_status_t s = ucp_worker_create(context, &wp, worker); s != UCS_OK) {
    *worker = nullptr;
    return ucx_call_failed("ucp_worker_create", s);
  }
  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  if (ucs_status_t s = ucp_worker_get_address(*worker, &addr, &addr_len); s != UCS_OK) {
    return ucx_call_failed("ucp_worker_get_address", s);
  }
  address->assign(reinterpret_cast<const char*>(addr), addr_len);
  ucp_worker_release_address(*worker, addr);
  return {};
}

Status set_am_handler(ucp_worker_h worker, unsigned id, ucp_am_recv_callback_t cb, void* arg) {
  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  am.id = id;
  am.cb = cb;
  am.arg = arg;
  am.flags = UCP_AM_FLAG_WHOLE_MSG;
  if (ucs_status_t s = ucp_worker_set_am_recv_handler(worker, &am); s != UCS_OK) {
    return ucx_call_failed("ucp_worker_set_am_recv_handler", s);
  }
  return {};
}

ucs_status_t open_endpoint(ucp_worker_h worker, std::string_view address, bool peer_errors,
                           ucp_err_handler_cb_t on_error, void* arg, ucp_ep_h* ep) {
  std::string copy(address);  // UCX reads the address as a struct: give it aligned storage
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.address = reinterpret_cast<const ucp_address_t*>(copy.data());
  p.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  p.err_handler.cb = on_error;
  p.err_handler.arg = arg;
  return ucp_ep_create(worker, &p, ep);
}

void close_endpoint(ucp_worker_h worker, ucp_ep_h ep) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  if (UCS_PTR_IS_PTR(req)) {
    // A forced close completes within a few progress calls.
    for (int i = 0; i < 100000 && ucp_request_check_status(req) == UCS_INPROGRESS; ++i) {
      ucp_worker_progress(worker);
    }
    ucp_request_free(req);
  }
}

Error ucx_error(ErrorCode code, std::string_view what, ucs_status_t s) {
  return err(code, what, ": ", ucs_status_string(s));
}

uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}

std::string host_boot_id() {
  constexpr size_t kMaxBootId = 64;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id.empty() ? "unknown-host" : id.substr(0, kMaxBootId);
}

bool tls_allows_shared_memory() {
  const char* env = std::getenv("UCX_TLS");
  if (env == nullptr || *env == '\0' || *env == '^') return true;
  std::istringstream in(env);
  for (std::string t; std::getline(in, t, ',');) {
    for (const char* shm : {"all", "sm", "shm", "posix", "sysv", "cma", "knem", "xpmem", "mm"}) {
      if (t == shm) return true;
    }
  }
  return false;
}

void FailedEndpoints::on_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
  // Called from inside ucp_worker_progress: only note it; the backend closes the peer.
  static_cast<FailedEndpoints*>(arg)->failed_.emplace_back(ep, status);
}

ucs_status_t FailedEndpoints::status_of(ucp_ep_h ep) const {
  ucs_status_t status = UCS_OK;
  for (const auto& [e, s] : failed_) {
    if (e == ep) status = s;
  }
  return status;
}

}  // namespace kvbm::xfer::detail
