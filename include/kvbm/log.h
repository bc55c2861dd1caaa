// Minimal logging for what kvbm cannot return as an Error: failures inside destructors
// (a deregistration that failed), one-time notes (direct I/O fell back to buffered I/O).
//
// By default messages at Warn and above go to stderr; KVBM_LOG=debug|info|warn|error|off
// changes the level. A process may install its own sink. Thread-safe.
#pragma once

#include "kvbm/export.h"

#include <functional>
#include <string>
#include <string_view>

namespace kvbm {

enum class LogLevel { Debug, Info, Warn, Error, Off };

using LogSink = std::function<void(LogLevel, std::string_view)>;

/// Replaces the sink (nullptr restores stderr) and returns the previous one.
KVBM_API LogSink set_log_sink(LogSink sink);
KVBM_API void set_log_level(LogLevel level);
KVBM_API LogLevel log_level();

KVBM_API void log(LogLevel level, std::string_view message);

}  // namespace kvbm
