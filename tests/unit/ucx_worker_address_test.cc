// The walk over a UCX worker address (xfer/backends/ucx/worker_address.h), on addresses
// built by hand in UCX 1.13's two address versions.
#include "xfer/backends/ucx/worker_address.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "support/test_support.h"

namespace kvbm::xfer::detail {
namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s += static_cast<char>(x);
  return s;
}

// Version 2: header (version 1, flags: uuid), uuid, one device (md 2, 2-byte address, last)
// with two interfaces (8 attribute bytes each; addresses of 3 and 0 bytes).
std::string v2_address() {
  return bytes({0x01, 0x02}) + std::string(8, 'u') +  // header, uuid
         bytes({0x02, 0x80 | 2, 'd', 'v'}) +          // md 2; device: last, 2 bytes
         bytes({0x34, 0x12}) + std::string(8, 'a') +  // tl checksum, attributes
         bytes({3, 'i', 'f', 'a'}) +                  // interface: 3 bytes
         bytes({0xcd, 0xab}) + std::string(8, 'b') +  // second tl
         bytes({0x80 | 0});                           // last interface, no address
}

TEST(UcxWorkerAddress, WalksAVersion2Address) {
  const std::string a = v2_address();
  auto w = parse_worker_address(a);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  EXPECT_EQ(w->version, 1);
  ASSERT_EQ(w->entries.size(), 2u);
  EXPECT_EQ(w->entries[0].md_index, 2u);
  EXPECT_EQ(w->entries[0].tl_checksum, 0x1234);
  EXPECT_EQ(w->entries[0].device, "dv");
  EXPECT_EQ(w->entries[0].interface, "ifa");
  EXPECT_EQ(w->entries[1].tl_checksum, 0xabcd);
  EXPECT_EQ(w->entries[1].interface, "");
}

TEST(UcxWorkerAddress, EveryTruncationAndTrailingByteIsRefused) {
  const std::string a = v2_address();
  for (size_t cut = 0; cut < a.size(); ++cut) {
    EXPECT_ERROR(parse_worker_address(a.substr(0, cut)), ErrorCode::InvalidArgument,
                 "UCX worker address");
  }
  EXPECT_ERROR(parse_worker_address(a + "x"), ErrorCode::InvalidArgument,
               "1 bytes after the last device");
}

TEST(UcxWorkerAddress, RefusesWhatUcxWouldMisread) {
  std::string a = v2_address();
  a[0] = 0x05;  // address version 6
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "unknown address version 5");

  a = v2_address();
  a.replace(10, 1, bytes({0x7f, 200}));  // md index 200, through the extension byte
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "memory domain index 200");

  a = v2_address();
  a[24] = static_cast<char>(0x40 | 3);  // the first interface claims an endpoint address
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "endpoint address");

  a = v2_address();
  a.replace(11, 1, bytes({0x80 | 0x40 | 2, 0}));  // a device of 0 paths
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "device of 0 paths");

  a = bytes({0x01, 0x00, 0xff});  // no devices at all
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "no transports listed");

  a = v2_address();
  a[11] = static_cast<char>(0x80 | 30);  // a device address longer than what is left
  EXPECT_ERROR(parse_worker_address(a), ErrorCode::InvalidArgument, "device cut short");
}

TEST(UcxWorkerAddress, Version1CarriesItsFlagsInTheHeaderAndHas16AttributeBytes) {
  // Header: version 0, flags 2 (uuid) in the high nibble; device: md 0, no address, last;
  // one interface: checksum, 16 attribute bytes, last with a 1-byte address.
  const std::string a = bytes({0x20}) + std::string(8, 'u') + bytes({0x00, 0x80}) +
                        bytes({0x63, 0x75}) + std::string(16, 'a') + bytes({0x80 | 1, 'x'});
  auto w = parse_worker_address(a);
  ASSERT_TRUE(w.ok()) << w.error().to_string();
  EXPECT_EQ(w->version, 0);
  EXPECT_EQ(w->flags, 2);
  ASSERT_EQ(w->entries.size(), 1u);
  EXPECT_EQ(w->entries[0].tl_checksum, 0x7563);
  EXPECT_EQ(w->entries[0].interface, "x");
  // The floats UCX scores transports by: a negative or non-finite one is refused (UCX
  // asserts on a negative score).
  for (float bad : {-1.0f, std::nanf(""), INFINITY}) {
    for (size_t field : {0, 4, 8}) {  // overhead, bandwidth, latency
      std::string c = a;
      std::memcpy(c.data() + 13 + field, &bad, 4);
      EXPECT_ERROR(parse_worker_address(c), ErrorCode::InvalidArgument,
                   "interface attributes out of range");
    }
  }
  std::string zero_bandwidth = a;
  std::memset(zero_bandwidth.data() + 13 + 4, 0, 4);
  EXPECT_ERROR(parse_worker_address(zero_bandwidth), ErrorCode::InvalidArgument, "out of range");
  // An extension value is no extension in version 1: 0x1f is a 31-byte device address.
  std::string b = a;
  b[10] = static_cast<char>(0x80 | 0x1f);
  EXPECT_ERROR(parse_worker_address(b), ErrorCode::InvalidArgument, "device cut short");
}

}  // namespace
}  // namespace kvbm::xfer::detail
