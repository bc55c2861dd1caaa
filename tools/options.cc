#include "options.h"

#include <charconv>
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

namespace kvbm::tools {
namespace {

constexpr uint64_t kMaxBytes = uint64_t{1} << 50;
constexpr const char* kForms = "4096, 4K, 64KiB, 1M, 1G";

// Bytes per suffix; 0 for none known.
uint64_t suffix_scale(std::string_view s) {
  struct Unit {
    std::string_view name;
    uint64_t scale;
  };
  static constexpr Unit kUnits[] = {
      {"B", 1},           {"K", 1ull << 10},   {"k", 1ull << 10},   {"KiB", 1ull << 10},
      {"M", 1ull << 20},  {"m", 1ull << 20},   {"MiB", 1ull << 20}, {"G", 1ull << 30},
      {"g", 1ull << 30},  {"GiB", 1ull << 30}, {"T", 1ull << 40},   {"t", 1ull << 40},
      {"TiB", 1ull << 40}};
  for (const Unit& u : kUnits) {
    if (s == u.name) return u.scale;
  }
  return 0;
}

std::string unit_name(uint64_t unit) {
  if (unit == 1) return "bytes";
  if (unit == 1ull << 10) return "KiB";
  if (unit == 1ull << 20) return "MiB";
  if (unit == 1ull << 30) return "GiB";
  return "units of " + std::to_string(unit) + " bytes";
}

// How help shows a value: bytes with the largest suffix that divides them (64M), counts and
// values in larger units as numbers.
std::string shown(uint64_t v, uint64_t unit, bool bytes) {
  if (!bytes || unit != 1 || v == 0) return std::to_string(v);
  for (const auto& [suffix, scale] : {std::pair{"T", 1ull << 40}, std::pair{"G", 1ull << 30},
                                      std::pair{"M", 1ull << 20}, std::pair{"K", 1ull << 10}}) {
    if (v % scale == 0) return std::to_string(v / scale) + suffix;
  }
  return std::to_string(v);
}

std::string range_text(size_t min, size_t max, size_t unit, bool bytes = true) {
  return shown(min, unit, bytes) + ".." + shown(max, unit, bytes) +
         (unit == 1 ? "" : " " + unit_name(unit));
}

// The option's value (or list) parsed and range-checked; CLI::ValidationError otherwise.
std::vector<uint64_t> checked(const std::string& name, const std::string& text, bool list,
                              size_t min, size_t max, size_t unit) {
  Result<std::vector<uint64_t>> v = std::vector<uint64_t>{};
  if (list) {
    v = parse_size_list(text, unit);
  } else if (auto one = parse_size(text, unit); one) {
    v = std::vector<uint64_t>{*one};
  } else {
    v = one.error();
  }
  if (!v) throw CLI::ValidationError(name, v.error().message);
  for (uint64_t x : *v) {
    if (x < min || x > max) {
      throw CLI::ValidationError(name, std::to_string(x) +
                                           (unit == 1 ? "" : " " + unit_name(unit)) +
                                           " is not in " + range_text(min, max, unit));
    }
  }
  return *v;
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text, uint64_t unit) {
  auto bad = [&](const std::string& why) {
    return err(ErrorCode::InvalidArgument, "'", text, "' ", why);
  };
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || rest == text.data()) {
    return bad(std::string("is not a size (") + kForms + ")");
  }
  const std::string_view suffix(rest, static_cast<size_t>(end - rest));
  if (suffix.empty()) {
    if (unit != 0 && value > kMaxBytes / unit) return bad("exceeds 2^50 bytes");
    return value;
  }
  const uint64_t scale = suffix_scale(suffix);
  if (scale == 0) return bad(std::string("is not a size (") + kForms + ")");
  if (value > kMaxBytes / scale) return bad("exceeds 2^50 bytes");
  const uint64_t bytes = value * scale;
  if (bytes % unit != 0) return bad("is not a whole number of " + unit_name(unit));
  return bytes / unit;
}

Result<std::vector<uint64_t>> parse_size_list(std::string_view list, uint64_t unit) {
  std::vector<uint64_t> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = list.find(',', start);
    auto v = parse_size(list.substr(start, comma - start), unit);
    if (!v) return v.error();
    out.push_back(*v);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

CLI::Option* add_size_option(CLI::App& app, const std::string& name, size_t& value,
                             const std::string& help, size_t min, size_t max, size_t unit) {
  return app
      .add_option_function<std::string>(
          name,
          [&value, name, min, max, unit](const std::string& s) {
            value = checked(name, s, false, min, max, unit).front();
          },
          help + " [" + range_text(min, max, unit) + "; suffixes K, M, G]")
      ->type_name("SIZE")
      ->default_str(shown(value, unit, true));
}

namespace {

CLI::Option* add_list(CLI::App& app, const std::string& name, std::vector<size_t>& values,
                      const std::string& help, size_t min, size_t max, size_t unit, bool bytes) {
  std::string defaults;
  for (size_t v : values) defaults += (defaults.empty() ? "" : ",") + shown(v, unit, bytes);
  return app
      .add_option_function<std::string>(
          name,
          [&values, name, min, max, unit](const std::string& s) {
            auto v = checked(name, s, true, min, max, unit);
            values.assign(v.begin(), v.end());
          },
          help + " [each " + range_text(min, max, unit, bytes) +
              (bytes ? "; suffixes K, M, G]" : "]"))
      ->type_name(bytes ? "SIZE,..." : "N,...")
      ->default_str(defaults);
}

}  // namespace

CLI::Option* add_size_list_option(CLI::App& app, const std::string& name,
                                  std::vector<size_t>& values, const std::string& help, size_t min,
                                  size_t max, size_t unit) {
  return add_list(app, name, values, help, min, max, unit, true);
}

CLI::Option* add_count_list_option(CLI::App& app, const std::string& name,
                                   std::vector<size_t>& values, const std::string& help, size_t min,
                                   size_t max) {
  return add_list(app, name, values, help, min, max, 1, false);
}

namespace {

// The first word naming no subcommand where one is required: `kvbm foo`, `kvbm bench foo`.
std::optional<std::string> unknown_subcommand(CLI::App& app, int argc, char** argv) {
  CLI::App* at = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return std::nullopt;  // options are CLI11's to judge
    auto subs = at->get_subcommands([&](CLI::App* s) { return s->check_name(word); });
    if (!subs.empty()) {
      at = subs.front();
      continue;
    }
    if (at->get_require_subcommand_min() == 0) return std::nullopt;
    std::string choices;
    for (CLI::App* s : at->get_subcommands([](CLI::App* s) { return !s->get_group().empty(); })) {
      choices += (choices.empty() ? "" : ", ") + s->get_name();
    }
    const std::string where = at == &app ? "kvbm" : "kvbm " + at->get_name();
    return "unknown subcommand '" + word + "' of '" + where + "'; choose one of: " + choices;
  }
  return std::nullopt;
}

}  // namespace

int run_command_line(CLI::App& app, int argc, char** argv, const std::function<int()>& runner) {
  if (auto unknown = unknown_subcommand(app, argc, argv)) {
    std::cerr << "kvbm: " << *unknown << "\nRun with --help for more information.\n";
    return kUsageError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kUsageError;  // --help and --version exit 0
  }
  return runner ? runner() : kUsageError;
}

}  // namespace kvbm::tools
