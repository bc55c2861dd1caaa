// Agent metadata encode/decode: round trips, every validation error, and hostile bytes
// (truncations, bit flips, oversized input) that must decode or fail cleanly.
#include "xfer/metadata.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "support/test_support.h"

namespace kvbm::xfer::detail {
namespace {

constexpr size_t kNoLimit = std::numeric_limits<size_t>::max();

AgentMetadata sample() {
  AgentMetadata m;
  m.name = "agent-0";
  m.backends["ucx"] = std::string("worker\0addr\xff", 12);
  m.backends["posix"] = "";
  RegionMetadata a;
  a.type = MemType::Dram;
  a.desc = {0x7f0000001000, 4096, 0};
  a.remote_info["ucx"] = std::string("\0rkey\0", 6);
  RegionMetadata b;
  b.type = MemType::Vram;
  b.desc = {0x10000, 1 << 20, 3};
  RegionMetadata c;
  c.type = MemType::File;
  c.desc = {0, 512, 17};
  c.remote_info["posix"] = "f";
  c.remote_info["ucx"] = "u";
  RegionMetadata d;
  d.type = MemType::Unknown;
  d.desc = {1, 1, 0};
  m.regions = {a, b, c, d};
  return m;
}

// Decodes, and for whatever decodes checks that it survives another round trip.
// Returns the decode result so callers can check the error.
Result<AgentMetadata> decode_checked(std::string_view bytes) {
  auto r = decode_metadata(bytes, kNoLimit);
  if (r) {
    auto again = decode_metadata(encode_metadata(*r), kNoLimit);
    EXPECT_TRUE(again.ok()) << again.error().to_string();
    if (again) {
      EXPECT_EQ(*again, *r);
    }
  } else {
    EXPECT_EQ(r.code(), ErrorCode::InvalidArgument) << r.error().to_string();
  }
  return r;
}

TEST(Metadata, RoundTripsSample) {
  const auto m = sample();
  auto r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
  EXPECT_EQ(r->backends.at("ucx"), std::string("worker\0addr\xff", 12));
  EXPECT_EQ(r->regions[0].remote_info.at("ucx").size(), 6u);
}

TEST(Metadata, RoundTripsWithoutRegionsOrBackends) {
  AgentMetadata m;
  m.name = "x";
  auto r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
}

TEST(Metadata, RoundTripsManyRegions) {
  AgentMetadata m;
  m.name = "many";
  m.backends["ucx"] = "w";
  for (uint64_t i = 0; i < 10000; ++i) {
    RegionMetadata r;
    r.type = static_cast<MemType>(i % 4);
    r.desc = {i << 20, i + 1, i % 8};
    if (i % 3 == 0) r.remote_info["ucx"] = std::string(i % 50, static_cast<char>(i));
    m.regions.push_back(r);
  }
  auto r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
}

TEST(Metadata, RoundTripsExtremeValues) {
  auto m = sample();
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  m.regions[0].desc = {max - 1, 1, max};  // the last representable end
  m.regions[1].desc = {0, max, 0};
  m.name = std::string(256, 'n');
  auto r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
}

TEST(Metadata, EncodingIsDeterministic) {
  auto m = sample();
  for (int i = 0; i < 20; ++i) m.backends["b" + std::to_string(i)] = std::to_string(i);
  const auto bytes = encode_metadata(m);
  EXPECT_EQ(encode_metadata(*decode_metadata(bytes, kNoLimit)), bytes);
}

TEST(Metadata, RejectsInputOverTheLimitBeforeParsing) {
  const auto bytes = encode_metadata(sample());
  EXPECT_TRUE(decode_metadata(bytes, bytes.size()).ok());
  EXPECT_ERROR(decode_metadata(bytes, bytes.size() - 1), ErrorCode::InvalidArgument,
               std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                   std::to_string(bytes.size() - 1));
  // Garbage over the limit is reported as too big, i.e. not even parsed.
  EXPECT_ERROR(decode_metadata(std::string(100, '\xff'), 10), ErrorCode::InvalidArgument,
               "100 bytes exceeds the limit of 10");
}

TEST(Metadata, RejectsBytesThatDoNotParse) {
  EXPECT_ERROR(decode_metadata(seal_metadata(std::string("\xff\xff\xff\xff", 4)), kNoLimit),
               ErrorCode::InvalidArgument, "4 bytes do not parse");
  // A length-delimited field that claims more than there is.
  EXPECT_ERROR(decode_metadata(seal_metadata(std::string("\x12\x10"
                                                         "ab",
                                                         4)),
                               kNoLimit),
               ErrorCode::InvalidArgument, "do not parse");
}

TEST(Metadata, RejectsOtherVersions) {
  EXPECT_ERROR(decode_metadata(seal_metadata(""), kNoLimit), ErrorCode::InvalidArgument,
               "version 0");
  // A scalar repeated later on the wire overrides the first: this sets version = 3.
  const auto v3 = encode_metadata_payload(sample()) + std::string("\x08\x03", 2);
  EXPECT_ERROR(decode_metadata(seal_metadata(v3), kNoLimit), ErrorCode::InvalidArgument,
               "version 3 is not supported (1 and 2 (partial) are)");
  const auto v_max = encode_metadata_payload(sample()) + std::string("\x08\xff\xff\xff\xff\x0f", 6);
  EXPECT_ERROR(decode_metadata(seal_metadata(v_max), kNoLimit), ErrorCode::InvalidArgument,
               "version 4294967295");
}

// Partial metadata (version 2): connection data and/or regions, merged by the loader.
TEST(Metadata, PartialRoundTripsWithAndWithoutConnectionData) {
  auto m = sample();
  m.partial = true;
  m.incarnation = 0xfeedfacecafebeef;
  const std::string payload = encode_metadata_payload(m);
  ASSERT_GE(payload.size(), 2u);
  EXPECT_EQ(payload.substr(0, 2), std::string("\x08\x02", 2));  // version 2 on the wire
  auto r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
  // Regions alone: their remote_info is checked against the loaded peer's backends later.
  m.backends.clear();
  r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
  // Connection data alone.
  m = sample();
  m.partial = true;
  m.regions.clear();
  r = decode_metadata(encode_metadata(m), kNoLimit);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, m);
}

TEST(Metadata, PartialMetadataIsCheckedAsAWholeOne) {
  AgentMetadata m;
  m.name = "x";
  m.partial = true;
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "partial metadata carries neither connection data nor regions");
  m = sample();
  m.partial = true;
  m.regions[0].remote_info["gds"] = "x";  // with connection data, only listed backends
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "remote_info names backend 'gds'");
  m.backends.clear();
  m.regions[0].remote_info[std::string((size_t{1} << 20) + 1, 'b')] = "x";
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 0: backend name 'bbbb");
  m = sample();
  m.partial = true;
  m.regions[1].desc.len = 0;
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 1: empty");
}

TEST(Metadata, RejectsEmptyOrLongName) {
  auto m = sample();
  m.name = "";
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "agent name is empty");
  m.name = std::string(257, 'n');
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "of 257 bytes exceeds 256");
}

TEST(Metadata, RejectsEmptyRegion) {
  auto m = sample();
  m.regions[2].desc.len = 0;
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 2: empty (addr 0, len 0)");
}

TEST(Metadata, RejectsRegionThatOverflows) {
  auto m = sample();
  m.regions[3].desc = {std::numeric_limits<uint64_t>::max(), 2, 0};
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 3: addr 18446744073709551615 + len 2 overflows");
  m.regions[3].desc = {2, std::numeric_limits<uint64_t>::max() - 1, 0};
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 3: addr 2 + len 18446744073709551614 overflows");
}

TEST(Metadata, RejectsUnknownMemoryType) {
  auto m = sample();
  m.regions[1].type = static_cast<MemType>(7);
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 1: unknown memory type 7");
}

TEST(Metadata, RejectsRemoteInfoForUnlistedBackend) {
  auto m = sample();
  m.regions[0].remote_info["gds"] = "x";
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 0: remote_info names backend 'gds', which the metadata does not list");
}

TEST(Metadata, RejectsOverlongBackendNameAndRemoteInfo) {
  constexpr size_t kMiB = size_t{1} << 20;
  auto m = sample();
  m.backends[std::string(kMiB, 'b')] = "";
  EXPECT_TRUE(decode_metadata(encode_metadata(m), kNoLimit).ok());
  m.backends[std::string(kMiB + 1, 'b')] = "";
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "backend name 'bbbb");

  m = sample();
  m.regions[1].remote_info["ucx"] = std::string(kMiB, 'r');
  EXPECT_TRUE(decode_metadata(encode_metadata(m), kNoLimit).ok());
  m.regions[1].remote_info["ucx"] = std::string(kMiB + 1, 'r');
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "region 1: remote_info of backend 'ucx' is 1048577 bytes");
}

// Hand-made payload bytes, sealed: version 1, name "a", then `count` copies of `region`.
std::string with_regions(size_t count, std::string_view region) {
  std::string bytes(
      "\x08\x01\x12\x01"
      "a",
      5);
  bytes.reserve(bytes.size() + count * region.size());
  for (size_t i = 0; i < count; ++i) bytes += region;
  return seal_metadata(bytes);
}

TEST(Metadata, AcceptsAMillionRegionsButNoMore) {
  // Region {len: 1}: field 4, 2 bytes; inside, field 3 (varint) = 1.
  const std::string_view one_byte_region("\x22\x02\x18\x01", 4);
  auto ok = decode_metadata(with_regions(1'000'000, one_byte_region), kNoLimit);
  ASSERT_TRUE(ok.ok()) << ok.error().to_string();
  EXPECT_EQ(ok->regions.size(), 1'000'000u);
  EXPECT_ERROR(decode_metadata(with_regions(1'000'001, one_byte_region), kNoLimit),
               ErrorCode::InvalidArgument, "1000001 regions exceed the limit of 1000000");
}

TEST(Metadata, RejectsNonUtf8Names) {
  // proto3 `string` fields must be UTF-8; protobuf itself refuses the rest.
  auto m = sample();
  m.name = "bad\xff";
  EXPECT_ERROR(decode_metadata(encode_metadata(m), kNoLimit), ErrorCode::InvalidArgument,
               "do not parse");
}

// Past the envelope: mutated payloads, sealed, reach the payload decoder.
TEST(Metadata, EveryTruncationOfThePayloadDecodesOrFailsCleanly) {
  const auto payload = encode_metadata_payload(sample());
  ASSERT_GT(payload.size(), 50u);
  size_t failures = 0;
  for (size_t n = 0; n < payload.size(); ++n) {
    auto r = decode_checked(seal_metadata(std::string_view(payload).substr(0, n)));
    if (!r) ++failures;
    // A prefix that still decodes cannot hold everything the whole did.
    if (r) {
      EXPECT_NE(*r, sample()) << "prefix " << n;
    }
  }
  // Most cuts land inside a field; the empty prefix at least has no version.
  EXPECT_GT(failures, payload.size() / 2);
}

TEST(Metadata, EveryBitFlipOfThePayloadDecodesOrFailsCleanly) {
  const auto payload = encode_metadata_payload(sample());
  size_t failures = 0;
  for (size_t bit = 0; bit < payload.size() * 8; ++bit) {
    std::string flipped = payload;
    flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    auto r = decode_checked(seal_metadata(flipped));
    if (!r) ++failures;
  }
  // Flipping any bit of the leading version field must be caught.
  EXPECT_GE(failures, 8u);
}

TEST(Metadata, RandomPayloadBytesDecodeOrFailCleanly) {
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const auto valid = encode_metadata_payload(sample());
  int decoded = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string bytes = valid;
    // A few random byte overwrites keep most of the structure, so deeper checks run.
    for (int k = 0; k < 1 + i % 4; ++k) bytes[next() % bytes.size()] = static_cast<char>(next());
    if (decode_checked(seal_metadata(bytes))) ++decoded;
  }
  // Both outcomes occur: changes inside opaque bytes decode, broken structure does not.
  EXPECT_GT(decoded, 0);
  EXPECT_LT(decoded, 2000);
}

// --- The envelope: corruption and forgery are errors before the payload is parsed ---

TEST(MetadataEnvelope, EveryBitFlipOfTheBlobIsCaught) {
  const auto bytes = encode_metadata(sample());
  for (size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    std::string flipped = bytes;
    flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    auto r = decode_metadata(flipped, kNoLimit);
    ASSERT_FALSE(r.ok()) << "bit " << bit;
    EXPECT_EQ(r.code(), ErrorCode::InvalidArgument);
    // Inside the payload or the checksum, it is the checksum that catches it.
    if (bit / 8 >= 16) {
      EXPECT_NE(r.error().message.find("checksum mismatch"), std::string::npos)
          << "bit " << bit << ": " << r.error().message;
    }
  }
}

TEST(MetadataEnvelope, EveryTruncationOrExtensionOfTheBlobIsCaught) {
  const auto bytes = encode_metadata(sample());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = decode_metadata(std::string_view(bytes).substr(0, n), kNoLimit);
    EXPECT_EQ(r.code(), ErrorCode::InvalidArgument) << "prefix " << n;
  }
  EXPECT_ERROR(decode_metadata(bytes.substr(0, 10), kNoLimit), ErrorCode::InvalidArgument,
               "10 bytes is shorter than its 16-byte envelope header");
  EXPECT_ERROR(decode_metadata(bytes + "x", kNoLimit), ErrorCode::InvalidArgument,
               "bytes follow its header");
}

TEST(MetadataEnvelope, RejectsWrongMagicVersionAndFlags) {
  const auto bytes = encode_metadata(sample());
  // What a kvbm without the envelope sent: the bare payload.
  EXPECT_ERROR(decode_metadata(encode_metadata_payload(sample()), kNoLimit),
               ErrorCode::InvalidArgument, "is not 'KVMD'");
  std::string v2 = bytes;
  v2[4] = 2;
  EXPECT_ERROR(decode_metadata(v2, kNoLimit), ErrorCode::InvalidArgument,
               "metadata envelope version 2 is not supported (1 is)");
  std::string flags = bytes;
  flags[5] = 4;
  EXPECT_ERROR(decode_metadata(flags, kNoLimit), ErrorCode::InvalidArgument, "unknown flags 4");
}

TEST(MetadataEnvelope, SealedPayloadOpensToItself) {
  const std::string payload("any\0bytes", 9);
  const std::string sealed = seal_metadata(payload);
  auto opened = open_metadata(sealed, kNoLimit);  // a view into `sealed`
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  EXPECT_EQ(*opened, payload);
  EXPECT_EQ(encode_metadata(sample()), seal_metadata(encode_metadata_payload(sample())));
}

// --- Authentication: a key seals with an HMAC; a keyed reader loads only that ---

constexpr std::string_view kKey = "a key of at least 16 bytes";

TEST(MetadataAuth, MatchingKeyLoads) {
  auto r = decode_metadata(encode_metadata(sample(), kKey), kNoLimit, kKey);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, sample());
  // A reader without a key still checks the checksum, and loads it.
  EXPECT_TRUE(decode_metadata(encode_metadata(sample(), kKey), kNoLimit).ok());
}

TEST(MetadataAuth, KeyedReaderRefusesUnauthenticatedOrOtherKeys) {
  EXPECT_ERROR(decode_metadata(encode_metadata(sample()), kNoLimit, kKey),
               ErrorCode::InvalidArgument, "metadata is not authenticated");
  EXPECT_ERROR(decode_metadata(encode_metadata(sample(), "another key, 16+ bytes"), kNoLimit, kKey),
               ErrorCode::InvalidArgument,
               "metadata authentication failed: its MAC does not match this agent's key");
}

TEST(MetadataAuth, ForgedPayloadWithARecomputedChecksumIsRefused) {
  // An attacker without the key changes a region and fixes up the checksum: the MAC
  // (over the header and the checksum) no longer matches.
  auto forged = sample();
  forged.regions[0].desc.len = 1 << 30;
  const std::string payload = encode_metadata_payload(forged);
  const std::string genuine = encode_metadata(sample(), kKey);
  std::string blob = seal_metadata(payload, "attacker's own key!!");
  blob.replace(blob.size() - 32, 32, genuine.substr(genuine.size() - 32));  // the genuine MAC
  EXPECT_ERROR(decode_metadata(blob, kNoLimit, kKey), ErrorCode::InvalidArgument,
               "metadata authentication failed");
}

}  // namespace
}  // namespace kvbm::xfer::detail
