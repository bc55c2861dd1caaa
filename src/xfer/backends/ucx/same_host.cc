#include "xfer/backends/ucx/same_host.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <ctime>
#include <random>

#include "common/hex.h"

namespace kvbm::xfer::detail {
namespace {

constexpr std::string_view kRegionMagic = "KVU2";
constexpr uint8_t kHasFile = 1;
constexpr size_t kFileFields = 4 + 8 + 8 + 8;

int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

template <typename T>
bool parse_number(std::string_view text, T& out, int base = 10) {
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out, base);
  return ec == std::errc() && p == text.data() + text.size() && !text.empty();
}

void put_u64(std::string& s, uint64_t v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
uint64_t get_u64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

Result<SameHostMode> parse_same_host_mode(std::string_view text) {
  if (text == "auto") return SameHostMode::Auto;
  if (text == "cma") return SameHostMode::Cma;
  if (text == "off") return SameHostMode::Off;
  return err(ErrorCode::InvalidArgument, "UCX same_host '", text, "' is not one of auto, cma, off");
}

SameHostSelf::SameHostSelf() {
  std::random_device rd;
  for (uint64_t& t : token_) t = (uint64_t{rd()} << 32) ^ rd();
  char buf[96];
  std::snprintf(buf, sizeof buf, "%d %llx %016llx%016llx", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(token_)),
                static_cast<unsigned long long>(token_[0]),
                static_cast<unsigned long long>(token_[1]));
  line_ = buf;
}

std::optional<SameHostLine> parse_same_host_line(std::string_view line) {
  // "<pid> <token address hex> <token: 32 hex digits>"
  const size_t a = line.find(' ');
  const size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  SameHostLine out;
  int pid = 0;
  if (b == std::string_view::npos || line.size() - b - 1 != 32 ||
      !parse_number(line.substr(0, a), pid) || pid <= 0 ||
      !parse_number(line.substr(a + 1, b - a - 1), out.token_addr, 16) ||
      !parse_number(line.substr(b + 1, 16), out.token[0], 16) ||
      !parse_number(line.substr(b + 17, 16), out.token[1], 16)) {
    return std::nullopt;
  }
  out.pid = pid;
  return out;
}

std::shared_ptr<SameHostPeer> SameHostPeer::reach(std::string_view line, std::string* why) {
  const auto parsed = parse_same_host_line(line);
  if (!parsed) {
    *why = "malformed same-host line";
    return nullptr;
  }
  const pid_t pid = parsed->pid;
  const uint64_t addr = parsed->token_addr;
  const uint64_t* token = parsed->token;
  const int pidfd = open_pidfd(pid);
  std::shared_ptr<SameHostPeer> peer(new SameHostPeer(pid, pidfd, addr, token));
  if (!peer->token_matches()) {
    *why = "cannot read the memory of pid " + std::to_string(pid) + " (" +
           (errno != 0 ? std::strerror(errno) : "token differs: another process") + ")";
    return nullptr;
  }
  return peer;
}

SameHostPeer::SameHostPeer(pid_t pid, int pidfd, uint64_t token_addr, const uint64_t token[2])
    : pid_(pid), pidfd_(pidfd), token_addr_(token_addr) {
  token_[0] = token[0];
  token_[1] = token[1];
}

SameHostPeer::~SameHostPeer() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool SameHostPeer::token_matches() const {
  uint64_t got[2] = {0, 0};
  iovec l{got, sizeof got};
  iovec r{reinterpret_cast<void*>(token_addr_), sizeof got};
  errno = 0;
  if (::process_vm_readv(pid_, &l, 1, &r, 1, 0) != static_cast<ssize_t>(sizeof got)) return false;
  errno = 0;
  return got[0] == token_[0] && got[1] == token_[1];
}

bool SameHostPeer::exited() const {
  // The coarse clock (a few ms of resolution) costs a memory read where the precise one
  // costs a small request's worth: a liveness answer may be that old.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  const int64_t now = int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  if (now < alive_until_ns_.load(std::memory_order_relaxed)) return false;
  bool gone;
  if (pidfd_ < 0) {
    gone = !token_matches();
  } else {
    pollfd p{pidfd_, POLLIN, 0};
    gone = ::poll(&p, 1, 0) > 0;
  }
  if (!gone) alive_until_ns_.store(now + 1'000'000, std::memory_order_relaxed);
  return gone;
}

Status SameHostPeer::copy(Op op, const std::vector<iovec>& local,
                          const std::vector<iovec>& remote) const {
  // One call moves up to IOV_MAX descriptors, and may stop early (a page fault on one
  // side, a signal): continue from where it stopped.
  size_t li = 0, ri = 0, loff = 0, roff = 0;
  std::vector<iovec> lv, rv;
  while (li < local.size()) {
    lv.clear();
    rv.clear();
    size_t want = 0;
    for (size_t i = li; i < local.size() && lv.size() < IOV_MAX; ++i) {
      const size_t skip = i == li ? loff : 0;
      lv.push_back({static_cast<char*>(local[i].iov_base) + skip, local[i].iov_len - skip});
      want += local[i].iov_len - skip;
    }
    size_t got_remote = 0;
    for (size_t i = ri; i < remote.size() && rv.size() < IOV_MAX && got_remote < want; ++i) {
      const size_t skip = i == ri ? roff : 0;
      rv.push_back({static_cast<char*>(remote[i].iov_base) + skip, remote[i].iov_len - skip});
      got_remote += remote[i].iov_len - skip;
    }
    const ssize_t n = op == Op::Write
                          ? ::process_vm_writev(pid_, lv.data(), lv.size(), rv.data(), rv.size(), 0)
                          : ::process_vm_readv(pid_, lv.data(), lv.size(), rv.data(), rv.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      const uint64_t at = reinterpret_cast<uint64_t>(rv.empty() ? nullptr : rv[0].iov_base);
      if (e == ESRCH) return err(ErrorCode::Remote, "peer process ", pid_, " has exited");
      if (e == EFAULT) {
        return err(ErrorCode::Remote, "peer process ", pid_, ": memory near ",
                   kvbm::detail::hex(at), " is not mapped (freed or deregistered by the peer?)");
      }
      return err(ErrorCode::Remote, "process_vm_", op == Op::Write ? "writev" : "readv",
                 " with pid ", pid_, ": ", std::strerror(e));
    }
    if (n == 0) return err(ErrorCode::Remote, "peer process ", pid_, " moved no bytes");
    // Advance both sides by n bytes.
    for (size_t left = static_cast<size_t>(n); left > 0;) {
      const size_t step = std::min(left, local[li].iov_len - loff);
      loff += step;
      left -= step;
      if (loff == local[li].iov_len) ++li, loff = 0;
    }
    for (size_t left = static_cast<size_t>(n); left > 0;) {
      const size_t step = std::min(left, remote[ri].iov_len - roff);
      roff += step;
      left -= step;
      if (roff == remote[ri].iov_len) ++ri, roff = 0;
    }
  }
  return {};
}

std::string encode_region_info(const DramRegionInfo& info) {
  std::string s(kRegionMagic);
  s.push_back(static_cast<char>(info.file ? kHasFile : 0));
  if (info.file) {
    const uint32_t fd = static_cast<uint32_t>(info.file->fd);
    s.append(reinterpret_cast<const char*>(&fd), sizeof fd);
    put_u64(s, info.file->dev);
    put_u64(s, info.file->ino);
    put_u64(s, info.file->offset);
  }
  s += info.rkey;
  return s;
}

Result<DramRegionInfo> decode_region_info(std::string_view bytes) {
  if (bytes.size() < kRegionMagic.size() + 1 ||
      bytes.substr(0, kRegionMagic.size()) != kRegionMagic)
    return err(ErrorCode::InvalidArgument, "UCX region info of ", bytes.size(),
               " bytes lacks its 'KVU2' header");
  const uint8_t flags = static_cast<uint8_t>(bytes[kRegionMagic.size()]);
  bytes.remove_prefix(kRegionMagic.size() + 1);
  if ((flags & ~kHasFile) != 0)
    return err(ErrorCode::InvalidArgument, "UCX region info has unknown flags ", int{flags});
  DramRegionInfo info;
  if (flags & kHasFile) {
    if (bytes.size() < kFileFields)
      return err(ErrorCode::InvalidArgument, "UCX region info: file fields cut short");
    uint32_t fd;
    std::memcpy(&fd, bytes.data(), sizeof fd);
    if (fd > static_cast<uint32_t>(INT_MAX))
      return err(ErrorCode::InvalidArgument, "UCX region info: fd ", fd, " out of range");
    info.file = SharedFileRef{static_cast<int32_t>(fd), get_u64(bytes.data() + 4),
                              get_u64(bytes.data() + 12), get_u64(bytes.data() + 20)};
    bytes.remove_prefix(kFileFields);
  }
  if (bytes.empty()) return err(ErrorCode::InvalidArgument, "empty UCX remote key");
  info.rkey = std::string(bytes);
  return info;
}

Result<SharedFileRef> describe_shared_file(int fd, uint64_t offset) {
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return err(ErrorCode::Internal, "fstat of shared memory fd ", fd, ": ", std::strerror(errno));
  return SharedFileRef{fd, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                       offset};
}

Result<std::shared_ptr<SharedMapping>> SharedMapping::map(const SameHostPeer& peer,
                                                          const SharedFileRef& ref, uint64_t len) {
  const std::string path = "/proc/" + std::to_string(peer.pid()) + "/fd/" + std::to_string(ref.fd);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return err(ErrorCode::Remote, "open ", path, ": ", std::strerror(errno));
  struct stat st {};
  const bool same = ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_dev) == ref.dev &&
                    static_cast<uint64_t>(st.st_ino) == ref.ino;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = ref.offset / page * page;
  const uint64_t skip = ref.offset - start;
  const bool fits = same && ref.offset <= static_cast<uint64_t>(st.st_size) &&
                    len <= static_cast<uint64_t>(st.st_size) - ref.offset;
  if (!fits) {
    ::close(fd);
    return err(ErrorCode::Remote, path, " is not the file the peer published, or too short");
  }
  void* base = ::mmap(nullptr, skip + len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                      static_cast<off_t>(start));
  const int e = errno;
  ::close(fd);  // the mapping keeps the file
  if (base == MAP_FAILED) return err(ErrorCode::Remote, "mmap of ", path, ": ", std::strerror(e));
  return std::shared_ptr<SharedMapping>(
      new SharedMapping(base, skip + len, static_cast<char*>(base) + skip));
}

SharedMapping::~SharedMapping() {
  ::munmap(base_, len_);
}

}  // namespace kvbm::xfer::detail
