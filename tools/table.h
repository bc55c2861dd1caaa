// A plain-text table for command output: columns sized to their widest cell.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace kvbm::tools {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(std::ostream& out) const;
  const std::vector<std::string>& header() const { return header_; }
  const std::vector<std::vector<std::string>>& rows() const { return rows_; }

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "12.3" with the given number of decimals.
std::string fixed(double value, int decimals = 1);
// "64 MiB", "4 KiB", "512 B"
std::string human_bytes(size_t bytes);

}  // namespace kvbm::tools
