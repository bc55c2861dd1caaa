// RemoteDescriptor: notification, size, transfer descriptor list, the bytes (CBOR) and
// JSON forms and every way decoding them rejects malformed or hostile input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <random>
#include <string>

#include "kvbm/remote.h"
#include "support/test_support.h"

namespace kvbm {
namespace {

using json = nlohmann::json;
using xfer::MemType;

RemoteDescriptor sample() {
  return RemoteDescriptor(RemoteStorage(0x7f0000001000, 1 << 20, MemType::Dram, 0), "prefill-0");
}

json valid_object() {
  return json{{"v", 1}, {"agent", "a"}, {"addr", 4096}, {"size", 64}, {"mem", "VRAM"}, {"dev", 1}};
}

std::string cbor(const json& j) {
  auto v = json::to_cbor(j);
  return std::string(v.begin(), v.end());
}

TEST(RemoteDescriptor, AccessorsAndNotification) {
  RemoteDescriptor d = sample();
  EXPECT_EQ(d.size(), size_t{1} << 20);
  EXPECT_EQ(d.agent_name(), "prefill-0");
  EXPECT_EQ(d.storage(), RemoteStorage(0x7f0000001000, 1 << 20, MemType::Dram, 0));
  EXPECT_FALSE(d.notif().has_value());

  d.set_notif("blocks 3..7");
  ASSERT_TRUE(d.notif().has_value());
  EXPECT_EQ(*d.notif(), "blocks 3..7");
  d.set_notif("again");
  EXPECT_EQ(*d.notif(), "again");
  d.clear_notif();
  EXPECT_FALSE(d.notif().has_value());
  d.clear_notif();  // clearing nothing is fine
  EXPECT_FALSE(d.notif().has_value());

  d.set_notif("");  // an empty notification is still a notification
  ASSERT_TRUE(d.notif().has_value());
  EXPECT_EQ(*d.notif(), "");
}

TEST(RemoteDescriptor, EqualityCoversEveryField) {
  RemoteDescriptor a = sample();
  EXPECT_EQ(a, sample());
  RemoteDescriptor b = sample();
  b.set_notif("x");
  EXPECT_NE(a, b);
  EXPECT_NE(a, RemoteDescriptor(a.storage(), "other"));
  EXPECT_NE(a, RemoteDescriptor(RemoteStorage(1, 1, MemType::Dram, 0), a.agent_name()));
}

TEST(RemoteDescriptor, ToDescList) {
  RemoteDescriptor d(RemoteStorage(0x4000, 512, MemType::Vram, 3), "gpu-peer");
  EXPECT_EQ(d.to_desc_list(), xfer::DescList(MemType::Vram, {xfer::Desc{0x4000, 512, 3}}));
  RemoteDescriptor f(RemoteStorage(128, 256, MemType::File, 11), "disk-peer");
  EXPECT_EQ(f.to_desc_list(), xfer::DescList(MemType::File, {xfer::Desc{128, 256, 11}}));
}

TEST(RemoteDescriptor, BytesRoundTrip) {
  for (auto type : {MemType::Dram, MemType::Vram, MemType::File, MemType::Unknown}) {
    RemoteDescriptor d(RemoteStorage(UINT64_MAX - 10, 10, type, UINT64_MAX), "agent-x");
    auto back = RemoteDescriptor::from_bytes(d.to_bytes());
    ASSERT_TRUE(back.ok()) << back.error().to_string();
    EXPECT_EQ(*back, d);
    EXPECT_FALSE(back->notif().has_value());

    d.set_notif(std::string("binary\0\xff\x80 notif", 15));
    back = RemoteDescriptor::from_bytes(d.to_bytes());
    ASSERT_TRUE(back.ok()) << back.error().to_string();
    EXPECT_EQ(*back, d);
    EXPECT_EQ(back->notif()->size(), 15u);

    d.set_notif("");
    back = RemoteDescriptor::from_bytes(d.to_bytes());
    ASSERT_TRUE(back.ok()) << back.error().to_string();
    EXPECT_EQ(*back, d) << "an empty notification survives";
  }
}

TEST(RemoteDescriptor, JsonRoundTrip) {
  RemoteDescriptor d = sample();
  auto back = RemoteDescriptor::from_json(d.to_json());
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(*back, d);
  EXPECT_FALSE(back->notif().has_value());

  d.set_notif("blocks 0-63 received \"quoted\" \u00e9");
  back = RemoteDescriptor::from_json(d.to_json());
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(*back, d);

  // The JSON is readable: fields by name, the notification as text.
  json j = json::parse(d.to_json());
  EXPECT_EQ(j["v"], 1);
  EXPECT_EQ(j["agent"], "prefill-0");
  EXPECT_EQ(j["mem"], "DRAM");
  EXPECT_EQ(j["notif"], *d.notif());
}

TEST(RemoteDescriptor, JsonReplacesInvalidUtf8BytesKeepThem) {
  RemoteDescriptor d(RemoteStorage(4096, 64, MemType::Dram, 0), "agent\xff");
  d.set_notif("\xc3(");  // not UTF-8
  auto back = RemoteDescriptor::from_json(d.to_json());
  ASSERT_TRUE(back.ok()) << back.error().to_string();
  EXPECT_EQ(back->storage(), d.storage());
  EXPECT_EQ(back->agent_name(), "agent\xef\xbf\xbd") << "U+FFFD replaces the bad byte";
  EXPECT_NE(back->notif(), d.notif());
  auto exact = RemoteDescriptor::from_bytes(d.to_bytes());
  ASSERT_TRUE(exact.ok()) << exact.error().to_string();
  EXPECT_EQ(*exact, d);
}

TEST(RemoteDescriptor, DecodesAWellFormedForeignEncoding) {
  json j = valid_object();
  j["notif"] = "text notif";  // CBOR may carry the notification as text too
  auto d = RemoteDescriptor::from_bytes(cbor(j));
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->storage(), RemoteStorage(4096, 64, MemType::Vram, 1));
  EXPECT_EQ(d->agent_name(), "a");
  EXPECT_EQ(*d->notif(), "text notif");
  // Unknown extra fields are ignored (a newer minor writer).
  j["extra"] = {1, 2, 3};
  EXPECT_TRUE(RemoteDescriptor::from_json(j.dump()).ok());
}

// Each malformed object is rejected by both decoders with the same message.
void expect_rejected(const json& j, const std::string& needle) {
  SCOPED_TRACE(j.dump());
  EXPECT_ERROR(RemoteDescriptor::from_json(j.dump()), ErrorCode::InvalidArgument, needle);
  EXPECT_ERROR(RemoteDescriptor::from_bytes(cbor(j)), ErrorCode::InvalidArgument, needle);
}

TEST(RemoteDescriptorDecode, NotAnObject) {
  expect_rejected(json::array({1, 2}), "not an object");
  expect_rejected(json(42), "not an object");
  expect_rejected(json("string"), "not an object");
  expect_rejected(json(nullptr), "not an object");
}

TEST(RemoteDescriptorDecode, WrongVersion) {
  json j = valid_object();
  j["v"] = 2;
  expect_rejected(j, "version 2");
  j["v"] = 0;
  expect_rejected(j, "version 0");
  j["v"] = "1";
  expect_rejected(j, "'v' is not an unsigned integer");
  j.erase("v");
  expect_rejected(j, "lacks 'v'");
}

TEST(RemoteDescriptorDecode, MissingFields) {
  for (const char* key : {"addr", "size", "dev"}) {
    json j = valid_object();
    j.erase(key);
    expect_rejected(j, std::string("lacks '") + key + "'");
  }
  json j = valid_object();
  j.erase("mem");
  expect_rejected(j, "lacks 'mem'");
  j = valid_object();
  j.erase("agent");
  expect_rejected(j, "lacks 'agent'");
}

TEST(RemoteDescriptorDecode, MistypedFields) {
  for (const char* key : {"addr", "size", "dev"}) {
    for (json bad :
         {json(-1), json(1.5), json("12"), json(nullptr), json::array({1}), json(true)}) {
      json j = valid_object();
      j[key] = bad;
      expect_rejected(j, std::string("'") + key + "' is not an unsigned integer");
    }
  }
  for (json bad : {json(7), json(nullptr), json::array({"a"}), json::object()}) {
    json j = valid_object();
    j["agent"] = bad;
    expect_rejected(j, "field 'agent' is not a string");
    j = valid_object();
    j["mem"] = bad;
    expect_rejected(j, "field 'mem' is not a string");
  }
  for (json bad : {json(7), json(nullptr), json::array({"a"}), json(false)}) {
    json j = valid_object();
    j["notif"] = bad;
    expect_rejected(j, "'notif' is neither bytes nor a string");
  }
}

TEST(RemoteDescriptorDecode, UnknownMemoryType) {
  json j = valid_object();
  j["mem"] = "HBM";
  expect_rejected(j, "unknown memory type 'HBM'");
  j["mem"] = "dram";  // names are exact
  expect_rejected(j, "unknown memory type 'dram'");
  j["mem"] = "";
  expect_rejected(j, "unknown memory type ''");
}

TEST(RemoteDescriptorDecode, EmptyAgent) {
  json j = valid_object();
  j["agent"] = "";
  expect_rejected(j, "'agent' is empty");
}

TEST(RemoteDescriptorDecode, AddressPlusSizeOverflow) {
  json j = valid_object();
  j["addr"] = UINT64_MAX;
  j["size"] = 2;
  expect_rejected(j, std::to_string(UINT64_MAX) + " + size 2 overflows");
  j["addr"] = uint64_t{1} << 63;
  j["size"] = uint64_t{1} << 63;
  expect_rejected(j, "overflows");
  // Exactly reaching the top of the address space does not overflow.
  j["addr"] = UINT64_MAX - 2;
  j["size"] = 2;
  EXPECT_TRUE(RemoteDescriptor::from_json(j.dump()).ok());
}

TEST(RemoteDescriptorDecode, OversizedInput) {
  json j = valid_object();
  j["notif"] = std::string((1 << 20) + 1, 'n');
  EXPECT_ERROR(RemoteDescriptor::from_json(j.dump()), ErrorCode::InvalidArgument,
               "exceeds 1048576");
  EXPECT_ERROR(RemoteDescriptor::from_bytes(cbor(j)), ErrorCode::InvalidArgument,
               "exceeds 1048576");
  // Just under the limit decodes.
  j["notif"] = std::string(1000, 'n');
  EXPECT_TRUE(RemoteDescriptor::from_bytes(cbor(j)).ok());
}

// --- Hostile input: bounded work and memory per input, whatever its shape ---

TEST(RemoteDescriptorDecode, DeepNestingIsRefusedEarly) {
  // A valid descriptor with one unknown field nested 200 000 levels deep.
  std::string deep = valid_object().dump();
  deep.pop_back();
  deep += ",\"x\":" + std::string(200'000, '[') + std::string(200'000, ']') + "}";
  EXPECT_ERROR(RemoteDescriptor::from_json(deep), ErrorCode::InvalidArgument,
               "nests deeper than 32 levels");
  // Objects too, and unbalanced input that never closes.
  std::string objects;
  for (int i = 0; i < 10'000; ++i) objects += "{\"a\":";
  EXPECT_ERROR(RemoteDescriptor::from_json(objects), ErrorCode::InvalidArgument,
               "nests deeper than 32 levels");
}

TEST(RemoteDescriptorDecode, HugeArraysOfSmallValuesAreRefused) {
  std::string many = valid_object().dump();
  many.pop_back();
  many += ",\"x\":[0";
  while (many.size() < (1 << 20) - 16) many += ",0";
  many += "]}";
  EXPECT_ERROR(RemoteDescriptor::from_json(many), ErrorCode::InvalidArgument,
               "holds over 4096 values");
  // The same in CBOR: an array of 500 000 zero bytes (one byte each).
  json j = valid_object();
  j["x"] = json::array();
  std::string bytes = cbor(j);
  bytes.back() = '\x9a';  // the empty array's head, now "array of 500 000 items" (4-byte count)
  bytes += std::string("\x00\x07\xa1\x20", 4) + std::string(500'000, '\0');
  EXPECT_ERROR(RemoteDescriptor::from_bytes(bytes), ErrorCode::InvalidArgument,
               "holds over 4096 values");
}

TEST(RemoteDescriptorDecode, UnknownNestedFieldsWithinTheLimitsAreIgnored) {
  json j = valid_object();
  j["later"] = {{"a", json::array({1, 2, {{"b", "c"}}})}, {"d", nullptr}};
  auto from_json = RemoteDescriptor::from_json(j.dump());
  ASSERT_TRUE(from_json.ok()) << from_json.error().to_string();
  EXPECT_EQ(from_json->agent_name(), "a");
  auto from_bytes = RemoteDescriptor::from_bytes(cbor(j));
  ASSERT_TRUE(from_bytes.ok()) << from_bytes.error().to_string();
  EXPECT_EQ(*from_bytes, *from_json);
}

TEST(RemoteDescriptorDecode, NotCborOrJson) {
  EXPECT_ERROR(RemoteDescriptor::from_bytes(""), ErrorCode::InvalidArgument, "does not parse");
  EXPECT_ERROR(RemoteDescriptor::from_json(""), ErrorCode::InvalidArgument, "does not parse");
  EXPECT_ERROR(RemoteDescriptor::from_json("{\"v\": 1,"), ErrorCode::InvalidArgument,
               "does not parse");
  EXPECT_ERROR(RemoteDescriptor::from_json("not json"), ErrorCode::InvalidArgument,
               "does not parse");
  // JSON is not CBOR, and CBOR is not JSON.
  const std::string good_json = sample().to_json();
  const std::string good_cbor = sample().to_bytes();
  EXPECT_FALSE(RemoteDescriptor::from_bytes(good_json).ok());
  EXPECT_ERROR(RemoteDescriptor::from_json(good_cbor), ErrorCode::InvalidArgument,
               "does not parse");
  // Truncated CBOR, and CBOR with trailing bytes.
  for (size_t n = 0; n < good_cbor.size(); ++n) {
    EXPECT_FALSE(RemoteDescriptor::from_bytes(good_cbor.substr(0, n)).ok()) << n;
  }
  EXPECT_ERROR(RemoteDescriptor::from_bytes(good_cbor + "x"), ErrorCode::InvalidArgument,
               "does not parse");
  // A CBOR tag is refused, not skipped.
  std::string tagged = "\xc1" + cbor(valid_object());
  EXPECT_ERROR(RemoteDescriptor::from_bytes(tagged), ErrorCode::InvalidArgument, "does not parse");
}

TEST(RemoteDescriptorDecode, DeepNestingIsRejectedWithoutCrashing) {
  std::string deep_json(100000, '[');
  EXPECT_FALSE(RemoteDescriptor::from_json(deep_json).ok());
  deep_json += std::string(100000, ']');
  EXPECT_ERROR(RemoteDescriptor::from_json(deep_json), ErrorCode::InvalidArgument, "not an object");
  // nlohmann's CBOR reader recurses per level: deep input is refused before it.
  for (char head : {'\x81', '\xa1', '\x9f', '\xbf', '\xc6'}) {  // array, map, indefinite, tag
    std::string deep_cbor(100000, head);
    deep_cbor += '\x00';
    EXPECT_ERROR(RemoteDescriptor::from_bytes(deep_cbor), ErrorCode::InvalidArgument,
                 "nests deeper than 32 levels");
  }
  // A map nested in the allowed depth decodes (extra fields are ignored).
  json j = valid_object();
  json nested = 1;
  for (int i = 0; i < 30; ++i) nested = json::array({nested});
  j["extra"] = nested;
  EXPECT_TRUE(RemoteDescriptor::from_bytes(cbor(j)).ok());
  // Definite lengths larger than the input do not fool the depth check.
  EXPECT_FALSE(
      RemoteDescriptor::from_bytes(std::string("\x9b\xff\xff\xff\xff\xff\xff\xff\xff", 9)).ok());
  EXPECT_FALSE(
      RemoteDescriptor::from_bytes(std::string("\x5b\xff\xff\xff\xff\xff\xff\xff\xff", 9)).ok());
  // A declared size beyond what any decoder could hold: an error, never an exception or an
  // allocation of that size (the declared size is not trusted to reserve anything).
  EXPECT_ERROR(RemoteDescriptor::from_bytes(std::string("\x9b\x44\x5b\x00\x00\x00\x00\x00\x02", 9)),
               ErrorCode::InvalidArgument, "not an object");
  json huge = valid_object();
  huge["x"] = json::array();
  std::string declared = cbor(huge);
  declared.back() = '\x9b';
  declared += std::string("\x44\x5b\x00\x00\x00\x00\x00\x02", 8);
  EXPECT_ERROR(RemoteDescriptor::from_bytes(declared), ErrorCode::InvalidArgument,
               "does not parse");
  EXPECT_ERROR(RemoteDescriptor::from_bytes(std::string("\xbb\x44\x5b\x00\x00\x00\x00\x00\x02", 9)),
               ErrorCode::InvalidArgument, "does not parse");
}

TEST(RemoteDescriptorDecode, GarbageNeverCrashes) {
  std::mt19937_64 rng(12345);
  const std::string good = sample().to_bytes();
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(rng() % 128, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    (void)RemoteDescriptor::from_bytes(bytes);
    (void)RemoteDescriptor::from_json(bytes);
    // Bit flips of a valid encoding: either decode to something valid or fail cleanly.
    std::string flipped = good;
    flipped[rng() % flipped.size()] ^= static_cast<char>(1 << (rng() % 8));
    auto d = RemoteDescriptor::from_bytes(flipped);
    if (d.ok()) {
      EXPECT_FALSE(d->agent_name().empty());
      EXPECT_GE(d->storage().addr() + d->storage().size(), d->storage().addr());
    } else {
      EXPECT_EQ(d.code(), ErrorCode::InvalidArgument);
    }
  }
}

}  // namespace
}  // namespace kvbm
