// What `kvbm` leaves behind when a user stops it: nothing. On SIGINT, SIGTERM or SIGHUP the
// handler removes the registered scratch files and temp folders and kills the registered
// child process groups, then the process dies of the signal as it would have. Scratch
// files are best unlinked as soon as they are open; what must keep a name (a file dd
// opens by path, the folder that holds scratch files) is registered here.
//
// Registration takes a slot of a fixed table (the handler may not allocate); when the table
// is full the thing is simply not cleaned on a signal. Registering and releasing are
// thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <filesystem>

namespace kvbm::tools {

// Installs the handlers (once; later calls do nothing). main() calls it first.
void install_signal_cleanup();

// A file or a folder of files (not nested) removed on a signal while registered.
// Returns a slot for forget_on_signal, or -1 when the table is full.
int remove_on_signal(const std::filesystem::path& path, bool folder);
void forget_on_signal(int slot);

// A child process, the leader of its own process group, killed with its group on a signal.
int kill_on_signal(pid_t pgid);

// For a command that stops by itself (`kvbm serve`): from this call on, the first SIGINT,
// SIGTERM or SIGHUP only sets the flag returned (to the signal's number) and cleans
// nothing, so the command can end in order (withdraw from etcd, run its destructors);
// a second signal acts as before. Call it once the command is ready to watch the flag.
const std::atomic<int>& stop_on_signal();

// A file that is removed when this object goes away (and on a signal, meanwhile).
class ScratchFile {
 public:
  ScratchFile() = default;
  explicit ScratchFile(std::filesystem::path path);
  ScratchFile(ScratchFile&& other) noexcept;
  ScratchFile& operator=(ScratchFile&& other) noexcept;
  ~ScratchFile();
  const std::filesystem::path& path() const { return path_; }

 private:
  void reset();
  std::filesystem::path path_;
  int slot_ = -1;
};

}  // namespace kvbm::tools
