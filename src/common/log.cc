#include "kvbm/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace kvbm {
namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("KVBM_LOG");
  if (env == nullptr || *env == '\0') return LogLevel::Warn;
  const std::string v(env);
  if (v == "debug") return LogLevel::Debug;
  if (v == "info") return LogLevel::Info;
  if (v == "warn") return LogLevel::Warn;
  if (v == "error") return LogLevel::Error;
  if (v == "off") return LogLevel::Off;
  // A typo must not pass for a level: say so once (the logger reads the variable once).
  std::fprintf(stderr,
               "kvbm warn: KVBM_LOG='%s' is not one of debug, info, warn, error, off; "
               "logging at warn\n",
               env);
  return LogLevel::Warn;
}

const char* name(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
    case LogLevel::Off:
      break;
  }
  return "off";
}

struct Logger {
  std::mutex mu;
  LogSink sink;
  std::atomic<LogLevel> level{level_from_env()};
};

Logger& logger() {
  static Logger* l = new Logger;  // never destroyed: destructors may log during exit
  return *l;
}

}  // namespace

LogSink set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(logger().mu);
  std::swap(logger().sink, sink);
  return sink;
}

void set_log_level(LogLevel level) {
  logger().level = level;
}
LogLevel log_level() {
  return logger().level;
}

void log(LogLevel level, std::string_view message) {
  Logger& l = logger();
  if (level < l.level.load() || level == LogLevel::Off) return;
  std::lock_guard<std::mutex> lock(l.mu);
  if (l.sink) {
    l.sink(level, message);
  } else {
    std::fprintf(stderr, "kvbm %s: %.*s\n", name(level), static_cast<int>(message.size()),
                 message.data());
  }
}

}  // namespace kvbm
