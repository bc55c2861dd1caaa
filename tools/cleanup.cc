#include "cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

namespace kvbm::tools {
namespace {

// A slot is free (0), being written (1), a file (2), a folder (3) or a process group (4).
enum : int { kFree, kBusy, kFile, kFolder, kGroup };
struct Slot {
  std::atomic<int> state{kFree};
  char path[4096];
  pid_t pgid = 0;
};
std::array<Slot, 32> slots;
std::atomic<bool> stop_requested{false};  // stop_on_signal() was called
std::atomic<int> stop_signal{0};          // the signal that asked for the stop

int take(int kind, const char* path, pid_t pgid) {
  if (path != nullptr && std::strlen(path) >= sizeof(Slot::path)) return -1;
  for (size_t i = 0; i < slots.size(); ++i) {
    int expected = kFree;
    if (!slots[i].state.compare_exchange_strong(expected, kBusy)) continue;
    if (path != nullptr) std::strcpy(slots[i].path, path);
    slots[i].pgid = pgid;
    slots[i].state.store(kind);
    return static_cast<int>(i);
  }
  return -1;
}

// Unlinks every entry of a flat folder, then the folder; only async-signal-safe calls
// (getdents64 straight from the kernel: opendir/readdir may allocate).
void remove_folder(const char* path) {
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    alignas(8) char buf[4096];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
      if (n <= 0) break;
      for (long at = 0; at < n;) {
        const auto* d = reinterpret_cast<const dirent64*>(buf + at);
        if (std::strcmp(d->d_name, ".") != 0 && std::strcmp(d->d_name, "..") != 0)
          ::unlinkat(fd, d->d_name, 0);
        at += d->d_reclen;
      }
    }
    ::close(fd);
  }
  ::rmdir(path);
}

void on_signal(int sig) {
  if (stop_requested.load() && stop_signal.exchange(sig) == 0) {
    // SA_RESETHAND restored the default action: a second signal ends the process.
    return;
  }
  const int saved = errno;
  for (Slot& s : slots) {
    switch (s.state.load()) {
      case kGroup:
        ::kill(-s.pgid, SIGKILL);
        break;
      case kFile:
        ::unlink(s.path);
        break;
      case kFolder:
        remove_folder(s.path);
        break;
      default:
        break;
    }
  }
  errno = saved;
  // SA_RESETHAND restored the default action: die of the signal, as without the handler.
  ::raise(sig);
}

}  // namespace

void install_signal_cleanup() {
  static std::atomic<bool> installed{false};
  if (installed.exchange(true)) return;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

const std::atomic<int>& stop_on_signal() {
  stop_requested.store(true);
  return stop_signal;
}

int remove_on_signal(const std::filesystem::path& path, bool folder) {
  return take(folder ? kFolder : kFile, path.c_str(), 0);
}

int kill_on_signal(pid_t pgid) {
  return take(kGroup, nullptr, pgid);
}

void forget_on_signal(int slot) {
  if (slot >= 0 && static_cast<size_t>(slot) < slots.size()) slots[slot].state.store(kFree);
}

ScratchFile::ScratchFile(std::filesystem::path path)
    : path_(std::move(path)), slot_(remove_on_signal(path_, false)) {}

ScratchFile::ScratchFile(ScratchFile&& other) noexcept
    : path_(std::exchange(other.path_, {})), slot_(std::exchange(other.slot_, -1)) {}

ScratchFile& ScratchFile::operator=(ScratchFile&& other) noexcept {
  if (this != &other) {
    reset();
    path_ = std::exchange(other.path_, {});
    slot_ = std::exchange(other.slot_, -1);
  }
  return *this;
}

ScratchFile::~ScratchFile() {
  reset();
}

void ScratchFile::reset() {
  forget_on_signal(slot_);
  slot_ = -1;
  if (!path_.empty()) ::unlink(path_.c_str());
  path_.clear();
}

}  // namespace kvbm::tools
