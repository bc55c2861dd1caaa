// What every `kvbm ... --json` document shares (the machine, the versions, how it is
// printed), progress lines for long runs, and a table that prints each row as it finishes.
#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbm/result.h"

namespace kvbm::tools {

using Json = nlohmann::ordered_json;

// {"hostname", "cpu", "cpu_cores", "gpus": [names]} (with "gpus_note" saying why there are
// none). Touches CUDA: call it after any child process that must start first.
Json machine_json();
// {"kvbm", "ucx", "cuda_runtime", "cuda_driver"} (CUDA's as "12.4", null without CUDA).
Json versions_json();
// `j` on stdout, indented; invalid UTF-8 in strings replaced rather than thrown on.
void print_json(const Json& j);
// "kvbm <command>: <error>" on stderr; returns 1, the exit status of a run that failed.
int fail(std::string_view command, const Error& e);
// `line` on stderr when stderr is a terminal (a long run's progress); nothing otherwise.
void progress(const std::string& line);

// A table whose rows print as they finish: columns have fixed minimum widths (a wider cell
// pushes the rest of its row right). The header prints before the first row.
class StreamTable {
 public:
  StreamTable(std::ostream& out, std::vector<std::string> header, std::vector<size_t> widths);
  void add(const std::vector<std::string>& row);

 private:
  void line(const std::vector<std::string>& row);
  std::ostream& out_;
  std::vector<std::string> header_;
  std::vector<size_t> widths_;
  bool started_ = false;
};

}  // namespace kvbm::tools
