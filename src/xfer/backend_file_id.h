// The identity of the file behind a registered FILE region's fd (device and inode), and
// the check that the fd still refers to it: a number closed and reused, or replaced by
// dup2, for another file (or a socket, a pipe) is refused rather than read or written.
// Every backend that moves a registered fd's bytes checks it (POSIX, UCX's file server).
//
// Thread safety: plain values and free functions.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>

#include "kvbm/result.h"

namespace kvbm::xfer::detail {

struct FileId {
  bool known = false;  // fstat worked at registration
  uint64_t dev = 0, ino = 0;
};

// The file `fd` refers to now (known = false when fd is not an open descriptor).
inline FileId file_id_of(uint64_t fd) {
  struct stat st {};
  if (fd > INT_MAX || fstat(static_cast<int>(fd), &st) != 0) return {};
  return {true, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

// Io, naming fd, offset and len, when fd is closed now or refers to another file than
// `registered` (checked only where the registered identity is known).
inline Status check_file_id(const FileId& registered, uint64_t fd, uint64_t offset, uint64_t len) {
  struct stat st {};
  if (fd > INT_MAX || fstat(static_cast<int>(fd), &st) != 0) {
    const int e = fd > INT_MAX ? EBADF : errno;
    return err(ErrorCode::Io, "file fd ", fd, " offset ", offset, " len ", len, ": ",
               std::strerror(e));
  }
  if (registered.known && (static_cast<uint64_t>(st.st_dev) != registered.dev ||
                           static_cast<uint64_t>(st.st_ino) != registered.ino)) {
    return err(ErrorCode::Io, "file fd ", fd, " offset ", offset, " len ", len,
               ": fd no longer refers to the registered file (closed and reused, or replaced)");
  }
  return {};
}

}  // namespace kvbm::xfer::detail
