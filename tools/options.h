// What every `kvbm` subcommand shares on its command line: sizes with binary suffixes
// through one parser, options checked against their documented range while parsing, and
// the exit status of a usage error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "kvbm/result.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace kvbm::tools {

// The exit status of every usage error (an unknown subcommand or option, a value out of
// range); --help and --version exit 0, and a run that fails exits 1.
inline constexpr int kUsageError = 2;

// "4096", "4K" / "4k" / "4KiB", "1M" / "1MiB", "2G" / "2GiB", "1T" (binary units; "B" for
// bytes). A plain number counts `unit` bytes, and the result is in units too: for
// unit = 1 MiB, "64" and "64M" are 64 and "1G" is 1024. InvalidArgument naming the text
// when it is not a size, is not a whole number of units, or exceeds 2^50 bytes.
Result<uint64_t> parse_size(std::string_view text, uint64_t unit = 1);
// A comma-separated list of sizes, each as parse_size.
Result<std::vector<uint64_t>> parse_size_list(std::string_view list, uint64_t unit = 1);

// A size option stored into `value` (in units of `unit` bytes), checked to lie in
// [min, max] units while parsing; the help names the range and the suffixes, and the
// default is `value`'s value at the call.
CLI::Option* add_size_option(CLI::App& app, const std::string& name, size_t& value,
                             const std::string& help, size_t min, size_t max, size_t unit = 1);
// The same for a comma-separated list; every item in [min, max].
CLI::Option* add_size_list_option(CLI::App& app, const std::string& name,
                                  std::vector<size_t>& values, const std::string& help, size_t min,
                                  size_t max, size_t unit = 1);

// A comma-separated list of counts (no suffixes shown in help, though "1K" parses as 1024).
CLI::Option* add_count_list_option(CLI::App& app, const std::string& name,
                                   std::vector<size_t>& values, const std::string& help, size_t min,
                                   size_t max);

// Parses the command line and runs what it chose: `runner` once a subcommand's callback set
// it. Usage errors print a message naming the offending word or value and return
// kUsageError; an unknown subcommand is named, with the choices.
int run_command_line(CLI::App& app, int argc, char** argv, const std::function<int()>& runner);

}  // namespace kvbm::tools
