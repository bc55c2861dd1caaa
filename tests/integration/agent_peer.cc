// The second agent of the two-process tests: owns one registered host buffer filled
// with a known pattern, serves its metadata on 127.0.0.1 (or AGENT_PEER_LISTEN), and answers
// commands on stdin (one per line; replies on stdout):
//   check OFF LEN SEED POFF   -> OK | BAD <index>     (bytes vs pattern SEED at POFF)
//   fill SEED | zero          -> OK
//   fetch PORT                -> OK <name> | ERR <message>
//   expect MSG TIMEOUT_MS [OFF LEN SEED POFF]
//                             -> OK | BAD <index> | TIMEOUT   (checks bytes on arrival)
//   notifs                    -> NOTIFS <agent>:<msg> ...     (and clears them)
//   notify AGENT MSG          -> OK | ERR <message>
//   register BYTES SEED       -> OK <addr>   (another buffer, registered)
//   file BYTES SEED REGLEN    -> OK <fd>     (a temporary file of BYTES bytes of pattern
//                                             SEED, registered as FILE [0, REGLEN) of fd)
//   checkfile FD OFF LEN SEED POFF -> OK | BAD <index>   (file bytes vs pattern)
//   closefd FD                -> OK         (closes it; its registration stays)
//   fifo LEN                  -> OK <fd> <path>  (a FIFO, registered as FILE [0, LEN) of
//                                             its fd: a peer's READ of it is served once
//                                             bytes are written to path)
//   fsizelimit BYTES          -> OK         (RLIMIT_FSIZE, SIGXFSZ ignored: a write past
//                                             BYTES of any file fails with EFBIG)
//   expectfile MSG TIMEOUT_MS FD OFF LEN SEED POFF -> OK | BAD <index> | TIMEOUT
//   writefile AGENT FD LEN WAIT -> OK | ERR <message>  (WRITEs its buffer's first LEN bytes
//                                             to AGENT's FILE region of fd FD at offset 0;
//                                             WAIT 1: once done, 0: once posted)
//   publish                   -> OK | ERR <message>   (its metadata to etcd: KVBM_ETCD_ENDPOINTS,
//                                             lease AGENT_PEER_ETCD_TTL_S seconds if set)
//   quit
// Usage: agent_peer NAME BYTES SEED [poll]
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>

#include <algorithm>
#include <cstring>
#include <deque>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/pattern.h"
#include "kvbm/storage.h"
#include "kvbm/xfer/agent.h"

using namespace kvbm;

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const std::string name = argv[1];
  const size_t bytes = std::stoull(argv[2]);
  const uint64_t seed = std::stoull(argv[3]);
  xfer::AgentConfig config;
  config.progress_thread = !(argc > 4 && std::string(argv[4]) == "poll");
  if (const char* ttl = std::getenv("AGENT_PEER_ETCD_TTL_S")) {
    config.etcd_lease_ttl = std::chrono::seconds(std::stoi(ttl));
  }
  auto agent = xfer::Agent::create(name, config);
  if (!agent) {
    std::cout << "ERR " << agent.error().to_string() << std::endl;
    return 1;
  }
  auto buf = SystemAllocator(SystemMemory::Shareable).allocate(bytes);
  if (!buf) return 1;
  detail::fill_pattern(buf->data(), bytes, seed);
  if (auto st = (*agent)->register_storage(*buf); !st) {
    std::cout << "ERR " << st.error().to_string() << std::endl;
    return 1;
  }
  const char* listen_host = std::getenv("AGENT_PEER_LISTEN");  // another host's tests
  auto port = (*agent)->listen(listen_host != nullptr ? listen_host : "127.0.0.1", 0);
  if (!port) {
    std::cout << "ERR " << port.error().to_string() << std::endl;
    return 1;
  }
  std::cout << "READY " << *port << " " << buf->addr() << std::endl;

  std::vector<SystemStorage> extra;
  std::vector<std::unique_ptr<xfer::MemoryRegistration>> files;
  std::vector<std::unique_ptr<xfer::Request>> writes;  // writefile's, kept until quit
  auto check_file = [&](std::istringstream& in) -> std::string {
    (*agent)->progress();  // as in check: the progress thread's writes happen before
    int fd = -1;
    size_t off = 0, len = 0, poff = 0;
    uint64_t s = 0;
    in >> fd >> off >> len >> s >> poff;
    std::vector<char> got(len);
    if (pread(fd, got.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len))
      return "BAD pread";
    size_t bad = detail::find_pattern_mismatch(got.data(), len, s, poff);
    return bad == SIZE_MAX ? "OK" : "BAD " + std::to_string(bad);
  };
  std::deque<xfer::Notification> inbox;
  auto pull = [&] {
    for (auto& n : (*agent)->get_notifs()) inbox.push_back(std::move(n));
  };
  // Takes the notification `msg` out of the inbox once it arrives; false after `timeout`.
  auto wait_for = [&](const std::string& msg, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      pull();
      auto it = std::find_if(inbox.begin(), inbox.end(), [&](auto& n) { return n.message == msg; });
      if (it != inbox.end()) {
        inbox.erase(it);
        return true;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return false;
  };
  auto check = [&](std::istringstream& in) -> std::string {
    // Bytes a peer wrote may have been copied in by our progress thread; progress()
    // synchronizes with it, so they are visible to this thread from here on.
    (*agent)->progress();
    size_t off = 0, len = 0, poff = 0;
    uint64_t s = 0;
    in >> off >> len >> s >> poff;
    if (off + len > bytes) return "BAD range";
    size_t bad = detail::find_pattern_mismatch(static_cast<char*>(buf->data()) + off, len, s, poff);
    (*agent)->progress();  // and our reads are done before the progress thread writes again
    return bad == SIZE_MAX ? "OK" : "BAD " + std::to_string(bad);
  };

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    std::string reply;
    if (cmd == "check") {
      reply = check(in);
    } else if (cmd == "fill") {
      uint64_t s = 0;
      in >> s;
      detail::fill_pattern(buf->data(), bytes, s);
      reply = "OK";
    } else if (cmd == "zero") {
      std::memset(buf->data(), 0, bytes);
      reply = "OK";
    } else if (cmd == "fetch") {
      int p = 0;
      in >> p;
      auto r = (*agent)->fetch_remote_metadata("127.0.0.1", static_cast<uint16_t>(p));
      reply = r ? "OK " + *r : "ERR " + r.error().to_string();
    } else if (cmd == "file") {
      size_t n = 0, reglen = 0;
      uint64_t s = 0;
      in >> n >> s >> reglen;
      char path[] = "/tmp/kvbm_peer_file_XXXXXX";
      int fd = mkstemp(path);
      if (fd < 0) {
        reply = "ERR mkstemp";
      } else {
        unlink(path);  // closed (and gone) when this process ends
        std::vector<char> data(n);
        detail::fill_pattern(data.data(), n, s);
        if (pwrite(fd, data.data(), n, 0) != static_cast<ssize_t>(n)) {
          reply = "ERR pwrite";
        } else {
          auto reg = (*agent)->register_memory(
              xfer::DescList(xfer::MemType::File, {{0, reglen, static_cast<uint64_t>(fd)}}));
          reply = reg ? "OK " + std::to_string(fd) : "ERR " + reg.error().to_string();
          if (reg) files.push_back(std::move(*reg));
        }
      }
    } else if (cmd == "fifo") {
      size_t reglen = 0;
      in >> reglen;
      char dir[] = "/tmp/kvbm_peer_fifo_XXXXXX";
      const std::string path = mkdtemp(dir) ? std::string(dir) + "/fifo" : "";
      // Read and write: the open does not wait for a writer, and reads wait for bytes.
      const int fd =
          !path.empty() && mkfifo(path.c_str(), 0600) == 0 ? open(path.c_str(), O_RDWR) : -1;
      if (fd < 0) {
        reply = "ERR fifo";
      } else {
        auto reg = (*agent)->register_memory(
            xfer::DescList(xfer::MemType::File, {{0, reglen, static_cast<uint64_t>(fd)}}));
        reply = reg ? "OK " + std::to_string(fd) + " " + path : "ERR " + reg.error().to_string();
        if (reg) files.push_back(std::move(*reg));
      }
    } else if (cmd == "procmem") {
      // A "file" whose first 64 KiB fail every read and write with EIO: /proc/self/mem
      // below mmap_min_addr, where nothing is ever mapped.
      const int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
      auto reg = fd < 0 ? Result<std::unique_ptr<xfer::MemoryRegistration>>(
                              err(ErrorCode::Io, "open /proc/self/mem"))
                        : (*agent)->register_memory(xfer::DescList(
                              xfer::MemType::File, {{0, 65536, static_cast<uint64_t>(fd)}}));
      reply = reg ? "OK " + std::to_string(fd) : "ERR " + reg.error().to_string();
      if (reg) files.push_back(std::move(*reg));
    } else if (cmd == "fsizelimit") {
      rlim_t limit = 0;
      in >> limit;
      std::signal(SIGXFSZ, SIG_IGN);
      const rlimit r{limit, limit};
      reply = setrlimit(RLIMIT_FSIZE, &r) == 0 ? "OK" : "ERR setrlimit";
    } else if (cmd == "closefd") {
      int fd = -1;
      in >> fd;
      reply = close(fd) == 0 ? "OK" : "ERR close";
    } else if (cmd == "checkfile") {
      reply = check_file(in);
    } else if (cmd == "expectfile" || cmd == "expect") {
      // expectfile MSG MS FILE-CHECK... / expect MSG MS [CHECK...]: waits for the
      // notification, then checks the bytes the moment it arrived.
      std::string msg;
      long timeout_ms = 0;
      in >> msg >> timeout_ms;
      if (!wait_for(msg, std::chrono::milliseconds(timeout_ms))) {
        reply = "TIMEOUT";
      } else if (cmd == "expectfile") {
        reply = check_file(in);
      } else {
        reply = in.rdbuf()->in_avail() > 0 ? check(in) : "OK";
      }
    } else if (cmd == "notifs") {
      pull();
      reply = "NOTIFS";
      for (auto& n : inbox) reply += " " + n.agent + ":" + n.message;
      inbox.clear();
    } else if (cmd == "notify") {
      std::string to, msg;
      in >> to >> msg;
      auto st = (*agent)->gen_notif(to, msg);
      reply = st ? "OK" : "ERR " + st.error().to_string();
    } else if (cmd == "register") {
      size_t n = 0;
      uint64_t s = 0;
      in >> n >> s;
      auto more = SystemAllocator().allocate(n);
      if (!more) {
        reply = "ERR " + more.error().to_string();
      } else {
        detail::fill_pattern(more->data(), n, s);
        auto st = (*agent)->register_storage(*more);
        reply = st ? "OK " + std::to_string(more->addr()) : "ERR " + st.error().to_string();
        extra.push_back(std::move(*more));
      }
    } else if (cmd == "writefile") {
      std::string to;
      uint64_t fd = 0;
      size_t len = 0;
      int wait = 1;
      in >> to >> fd >> len >> wait;
      auto r = (*agent)->create_request(
          xfer::Op::Write, xfer::DescList(xfer::MemType::Dram, {{buf->addr(), len, 0}}),
          xfer::DescList(xfer::MemType::File, {{0, len, fd}}), to);
      Status st = r ? (*r)->post() : Status(r.error());
      if (st && wait == 1) st = (*r)->wait(std::chrono::seconds(30));
      reply = st ? "OK" : "ERR " + st.error().to_string();
      if (r) writes.push_back(std::move(*r));
    } else if (cmd == "publish") {
      auto st = (*agent)->publish_metadata();
      reply = st ? "OK" : "ERR " + st.error().to_string();
    } else if (cmd == "quit") {
      break;
    } else {
      reply = "ERR unknown command " + cmd;
    }
    std::cout << reply << std::endl;
  }
  writes.clear();
  files.clear();
  extra.clear();
  return 0;
}
