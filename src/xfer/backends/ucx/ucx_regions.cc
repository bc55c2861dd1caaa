// The UCX backend's regions: local ones (ucp_mem_map'ed DRAM with its packed key and,
// where it lives in a memory file, what a same-host peer needs to map it; FILE regions,
// served to peers) and peers' (unpacked keys, checked first; same-host mappings).
#include <unistd.h>

#include "common/hex.h"
#include "kvbm/log.h"
#include "storage/shared_memory.h"
#include "xfer/backends/ucx/ucx_backend_impl.h"

namespace kvbm::xfer::detail::ucx {

UcxRemoteRegion::~UcxRemoteRegion() {
  std::lock_guard<std::mutex> lock(backend->mu_);
  if (rkey != nullptr) ucp_rkey_destroy(rkey);
  peer->regions.erase(this);
}

UcxLocalRegion::~UcxLocalRegion() {
  if (shared_fd >= 0) ::close(shared_fd);
  if (memh == nullptr) {
    // Without the lock: this waits for the serving thread's I/O on the file, if any.
    backend->files_served_.remove(file);
    return;
  }
  std::unique_lock<std::mutex> lock(backend->mu_);
  // Peers' operations over active messages on it end first: none writes it once unmapped.
  if (!backend->am_.unserve(memory.addr, memory.len)) {
    lock.unlock();
    backend->wait_quiet(
        "peers' operations on deregistered region " + kvbm::detail::hex(memory.addr),
        [&] { return backend->am_.unserve(memory.addr, memory.len); });
    lock.lock();
  }
  if (ucs_status_t s = ucp_mem_unmap(backend->context_, memh); s != UCS_OK) {
    log(LogLevel::Error, ucx_error(ErrorCode::RegistrationFailed, "ucp_mem_unmap", s).to_string());
  }
}

Result<std::unique_ptr<LocalRegion>> UcxBackend::register_region(MemType type, const Desc& region) {
  if (type != MemType::Dram && type != MemType::File)
    return err(ErrorCode::Unsupported, "UCX registers DRAM and FILE only, not ", to_string(type));
  if (type == MemType::File) {
    files_served_.add(region);
    return std::unique_ptr<LocalRegion>(
        std::make_unique<UcxLocalRegion>(this, nullptr, std::string(kFileRegionInfo), region));
  }
  std::lock_guard<std::mutex> lock(mu_);
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = reinterpret_cast<void*>(region.addr);
  mp.length = region.len;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context_, &mp, &memh); s != UCS_OK) {
    return ucx_error(ErrorCode::RegistrationFailed, "ucp_mem_map", s);
  }
  void* packed = nullptr;
  size_t packed_len = 0;
  if (ucs_status_t s = ucp_rkey_pack(context_, memh, &packed, &packed_len); s != UCS_OK) {
    ucp_mem_unmap(context_, memh);
    return ucx_error(ErrorCode::RegistrationFailed, "ucp_rkey_pack", s);
  }
  DramRegionInfo info;
  info.rkey.assign(static_cast<const char*>(packed), packed_len);
  ucp_rkey_buffer_release(packed);
  int shared_fd = -1;
  if (same_host_ == SameHostMode::Auto) {
    // Memory from a memory file (SystemStorage): same-host peers may map it.
    if (auto shared = kvbm::detail::find_shared_memory(region.addr, region.len)) {
      if (auto ref = describe_shared_file(shared->fd, shared->offset)) {
        info.file = *ref;
        shared_fd = shared->fd;
      } else {
        ::close(shared->fd);
      }
    }
  }
  auto local =
      std::make_unique<UcxLocalRegion>(this, memh, encode_region_info(info), Desc{}, shared_fd);
  local->memory = region;
  am_.serve(region.addr, region.len);
  return std::unique_ptr<LocalRegion>(std::move(local));
}

Result<std::unique_ptr<RemoteRegion>> UcxBackend::load_remote_region(const std::string& agent,
                                                                     MemType type, const Desc& desc,
                                                                     std::string_view remote_info) {
  if (type != MemType::Dram && type != MemType::File)
    return err(ErrorCode::Unsupported, "UCX reaches DRAM and FILE only, not ", to_string(type));
  if (type == MemType::File && agent == env_.agent_name) {
    return err(ErrorCode::Unsupported,
               "UCX serves files to peers only; this agent's own files go through POSIX");
  }
  if (remote_info.empty()) return err(ErrorCode::InvalidArgument, "empty UCX remote key");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(agent);
  if (it == peers_.end())
    return err(ErrorCode::NotFound, "UCX is not connected to agent '", agent, "'");
  if (type == MemType::File) {
    if (remote_info != kFileRegionInfo) {
      return err(ErrorCode::InvalidArgument, "FILE region of agent '", agent,
                 "' has unknown UCX data of ", remote_info.size(), " bytes");
    }
    auto region = std::make_unique<UcxRemoteRegion>(this, it->second, nullptr, true);
    it->second->regions.insert(region.get());
    return std::unique_ptr<RemoteRegion>(std::move(region));
  }
  auto info = decode_region_info(remote_info);
  if (!info) return info.error();
  if (auto st = check_packed_rkey(info->rkey, shape_); !st) {
    return err(ErrorCode::InvalidArgument, "agent '", agent, "': ", st.error().message);
  }
  ucp_rkey_h rkey = nullptr;
  if (ucs_status_t s = ucp_ep_rkey_unpack(it->second->ep, info->rkey.data(), &rkey); s != UCS_OK) {
    return ucx_error(ErrorCode::InvalidArgument, "ucp_ep_rkey_unpack", s);
  }
  auto region = std::make_unique<UcxRemoteRegion>(this, it->second, rkey);
  region->base = desc.addr;
  region->packed = info->rkey;
  const std::shared_ptr<SameHostPeer>& host = it->second->host;
  if (host && info->file && same_host_ == SameHostMode::Auto) {
    auto mapping = SharedMapping::map(*host, *info->file, desc.len);
    if (mapping) {
      region->mapping = std::move(*mapping);
    } else {
      log(LogLevel::Info, "UCX: region " + kvbm::detail::hex(desc.addr) + " of agent '" + agent +
                              "' is not mapped here (" + mapping.error().message +
                              "); CMA reaches it");
    }
  }
  it->second->regions.insert(region.get());
  return std::unique_ptr<RemoteRegion>(std::move(region));
}

}  // namespace kvbm::xfer::detail::ucx
