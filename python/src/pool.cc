// The block manager (kvbm/pool.h): token hashes and sequences, block handles, the
// manager's tiers (their pools and layouts), match, allocate/register, onboard, flush,
// events and counters.
//
// Events go into an EventQueue that Python drains, never into a Python callback: a pool
// calls its callback under its lock (from the offload thread too), and a callback needing
// the GIL there could wait for a Python thread that holds the GIL while it drops a handle,
// which takes that same lock.
//
// Handles (MutableBlock, ImmutableBlock) are used with the GIL held: a handle's calls are
// short (one pool lock), and the GIL serializes the threads that share one handle object.
#include "kvbm/pool.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <span>

#include "common.h"

namespace kvbm::python {

namespace {

// ---- arguments --------------------------------------------------------------------------

// One int of 0..max; TypeError for a non-int, ValueError naming `what` out of range.
uint64_t uint_item(PyObject* item, const std::string& what, uint64_t max) {
  if (PyFloat_Check(item) || PyBool_Check(item)) throw py::type_error(what + " must be an int");
  py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(item));
  if (!idx) {
    PyErr_Clear();
    throw py::type_error(what + " must be an int, got " + type_name(item));
  }
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
  uint64_t u = static_cast<uint64_t>(v);
  if (overflow > 0) {
    u = PyLong_AsUnsignedLongLong(idx.ptr());
    if (PyErr_Occurred()) {  // past 2^64 - 1
      PyErr_Clear();
      overflow = -1;
    }
  }
  if (overflow < 0 || (overflow == 0 && v < 0) || u > max) {
    throw py::value_error(what + " is " + std::string(py::str(idx)) + ", not in 0.." +
                          std::to_string(max));
  }
  return u;
}

// A non-negative int that CPython stores compactly (a single digit: below 2^30, which every
// token id is), read without the general conversion, which is most of what a long prompt
// costs on its way in. False for anything else, which takes the general path.
inline bool compact_uint(PyObject* o, uint64_t* v) {
  if (!PyLong_CheckExact(o)) return false;
#if PY_VERSION_HEX >= 0x030C0000
  auto* l = reinterpret_cast<PyLongObject*>(o);
  if (!PyUnstable_Long_IsCompact(l)) return false;
  const Py_ssize_t x = PyUnstable_Long_CompactValue(l);
  if (x < 0) return false;
  *v = static_cast<uint64_t>(x);
#else
  const Py_ssize_t size = Py_SIZE(o);
  if (size != 0 && size != 1) return false;
  *v = size == 0 ? 0 : reinterpret_cast<PyLongObject*>(o)->ob_digit[0];
#endif
  return true;
}

// A 1-D buffer of integers (a numpy array), read without a Python object per item; false
// for other objects.
template <typename T>
bool uints_from_buffer(py::handle obj, const char* name, std::vector<T>& out) {
  if (!PyObject_CheckBuffer(obj.ptr()) || PyBytes_Check(obj.ptr())) return false;
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
  std::string f = info.format;
  if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f.erase(0, 1);
  if (info.ndim != 1 || f.size() != 1 || std::string("bhilqBHILQ").find(f[0]) == std::string::npos)
    return false;
  const bool is_signed = f[0] >= 'a';
  const auto* p = static_cast<const char*>(info.ptr);
  out.resize(static_cast<size_t>(info.shape[0]));
  for (size_t i = 0; i < out.size(); ++i, p += info.strides[0]) {
    uint64_t u = 0;
    bool negative = false;
    if (is_signed) {
      int64_t v = 0;
      std::memcpy(reinterpret_cast<char*>(&v), p, static_cast<size_t>(info.itemsize));
      v = (v << (64 - 8 * info.itemsize)) >> (64 - 8 * info.itemsize);  // sign-extend
      negative = v < 0;
      u = static_cast<uint64_t>(v);
    } else {
      std::memcpy(reinterpret_cast<char*>(&u), p, static_cast<size_t>(info.itemsize));
    }
    if (negative || u > std::numeric_limits<T>::max()) {
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is " +
                            (negative ? "negative" : std::to_string(u)) + ", not in 0.." +
                            std::to_string(std::numeric_limits<T>::max()));
    }
    out[i] = static_cast<T>(u);
  }
  return true;
}

// Tokens (T = Token) or hashes (T = uint64_t): a sequence of ints, an iterable of them
// (range, generator) or a 1-D integer numpy array.
template <typename T>
std::vector<T> uints_arg(py::handle obj, const char* name) {
  std::vector<T> out;
  if (PyLong_Check(obj.ptr()) || PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be a sequence of ints, got " + type_name(obj));
  }
  if (uints_from_buffer(obj, name, out)) return out;
  py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), ""));
  if (!seq) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be a sequence of ints, got " + type_name(obj));
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  out.resize(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    // Plain ints in range take the short way (a prompt's tokens: once per token).
    if (uint64_t u = 0; compact_uint(items[i], &u)) {
      if (u <= std::numeric_limits<T>::max()) {
        out[static_cast<size_t>(i)] = static_cast<T>(u);
        continue;
      }
    } else if (PyLong_CheckExact(items[i])) {
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
      if (overflow == 0 && v >= 0 &&
          static_cast<unsigned long long>(v) <= std::numeric_limits<T>::max()) {
        out[static_cast<size_t>(i)] = static_cast<T>(v);
        continue;
      }
    }
    out[static_cast<size_t>(i)] =
        static_cast<T>(uint_item(items[i], std::string(name) + "[" + std::to_string(i) + "]",
                                 std::numeric_limits<T>::max()));
  }
  return out;
}

uint64_t hash_arg(py::handle obj, const char* name) {
  return uint_item(obj.ptr(), name, UINT64_MAX);
}

template <typename T>
py::list list_of(std::span<const T> v) {
  py::list out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = py::int_(v[i]);
  return out;
}

std::chrono::milliseconds seconds_arg(double s, const char* name) {
  if (!(s >= 0) || s > 86400.0 * 365) {
    throw py::value_error(std::string(name) + " must be 0..1 year in seconds, got " +
                          std::to_string(s));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000.0)));
}

// ---- hashes and token sequences ---------------------------------------------------------

std::string hex(uint64_t h) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void bind_hashes(py::module_& m) {
  m.def(
      "salt_hash", [](py::handle salt) { return salt_hash(bytes_arg(salt, "salt")); },
      py::arg("salt"),
      "XXH3-64 of the salt's bytes (str: UTF-8), seed 0; 0 for an empty salt (Dynamo's "
      "SaltHash).");
  m.def(
      "block_hash",
      [](py::handle tokens, py::handle salt) {
        auto t = uints_arg<Token>(tokens, "tokens");
        return block_hash(t, hash_arg(salt, "salt_hash"));
      },
      py::arg("tokens"), py::arg("salt_hash") = 0,
      "XXH3-64 of the tokens as little-endian u32 bytes, seeded with the salt hash.");
  m.def(
      "sequence_hash",
      [](py::handle parent, py::handle block, py::handle salt) {
        return sequence_hash(hash_arg(parent, "parent"), hash_arg(block, "block"),
                             hash_arg(salt, "salt_hash"));
      },
      py::arg("parent"), py::arg("block"), py::arg("salt_hash") = 0,
      "The sequence hash of a block k > 0: XXH3-64 of (parent sequence hash, block hash) "
      "as little-endian u64s, seeded with the salt hash. Block 0's is its block hash.");

  py::class_<SequenceBlock>(m, "SequenceBlock",
                            "One full block of a sequence, as pools key it (the key a "
                            "MutableBlock is completed with).")
      .def(py::init([](py::handle b, py::handle s, py::handle p) {
             std::optional<SequenceHash> parent;
             if (!p.is_none()) parent = hash_arg(p, "parent_hash");
             return SequenceBlock{hash_arg(b, "block_hash"), hash_arg(s, "sequence_hash"), parent};
           }),
           py::arg("block_hash"), py::arg("sequence_hash"), py::arg("parent_hash") = py::none())
      .def_readonly("block_hash", &SequenceBlock::block_hash)
      .def_readonly("sequence_hash", &SequenceBlock::sequence_hash)
      .def_readonly("parent_hash", &SequenceBlock::parent_hash)
      .def(
          "__eq__", [](const SequenceBlock& a, const SequenceBlock& b) { return a == b; },
          py::is_operator())
      .def("__repr__", [](const SequenceBlock& b) {
        return "SequenceBlock(sequence_hash=" + hex(b.sequence_hash) +
               ", parent_hash=" + (b.parent_hash ? hex(*b.parent_hash) : "None") + ")";
      });
}

TokenSequence make_sequence(int64_t block_size, py::handle tokens, py::handle salt,
                            py::handle salt_hash_obj) {
  if (block_size <= 0 || block_size > int64_t{UINT32_MAX}) {
    throw py::value_error("block_size must be 1..4294967295, got " + std::to_string(block_size));
  }
  if (!salt.is_none() && !salt_hash_obj.is_none()) {
    throw py::value_error("pass salt or salt_hash, not both");
  }
  const SaltHash s = salt_hash_obj.is_none()
                         ? (salt.is_none() ? 0 : salt_hash(bytes_arg(salt, "salt")))
                         : hash_arg(salt_hash_obj, "salt_hash");
  TokenSequence seq = unwrap(TokenSequence::with_salt_hash(static_cast<uint32_t>(block_size), s));
  if (!tokens.is_none()) seq.extend(uints_arg<Token>(tokens, "tokens"));
  return seq;
}

void bind_token_sequence(py::module_& m) {
  using TS = TokenSequence;
  py::class_<TS>(m, "TokenSequence",
                 "The tokens of one request, split into full blocks of block_size tokens "
                 "(hashed as they fill, Dynamo-compatible) and a tail. Not thread-safe.")
      .def(py::init(&make_sequence), py::arg("block_size"), py::arg("tokens") = py::none(),
           py::kw_only(), py::arg("salt") = py::none(), py::arg("salt_hash") = py::none(),
           "salt (bytes or str) is hashed with salt_hash(); or pass its hash as salt_hash.")
      .def(
          "append",
          [](TS& s, py::handle t) { return s.append(uint_item(t.ptr(), "token", UINT32_MAX)); },
          py::arg("token"), "Appends a token; returns the number of blocks it completed (0 or 1).")
      .def(
          "extend", [](TS& s, py::handle t) { return s.extend(uints_arg<Token>(t, "tokens")); },
          py::arg("tokens"), "Appends tokens; returns the number of blocks they completed.")
      .def(
          "truncate", [](TS& s, int64_t n) { check(s.truncate(index_arg(n, "num_tokens"))); },
          py::arg("num_tokens"),
          "Keeps the first num_tokens tokens (InvalidArgumentError past the end).")
      .def("__len__", &TS::size)
      .def_property_readonly("block_size", &TS::block_size)
      .def_property_readonly("salt_hash", &TS::salt)
      .def_property_readonly("num_blocks", &TS::num_blocks)
      .def_property_readonly("tokens", [](const TS& s) { return list_of(s.tokens()); })
      .def_property_readonly("tail", [](const TS& s) { return list_of(s.tail()); })
      .def_property_readonly("block_hashes", [](const TS& s) { return list_of(s.block_hashes()); })
      .def_property_readonly("sequence_hashes",
                             [](const TS& s) { return list_of(s.sequence_hashes()); })
      .def(
          "block", [](const TS& s, int64_t i) { return unwrap(s.block(index_arg(i, "index"))); },
          py::arg("index"), "Full block `index` (OutOfBoundsError past num_blocks).")
      .def_property_readonly("blocks",
                             [](const TS& s) {
                               std::vector<SequenceBlock> out;
                               for (size_t i = 0; i < s.num_blocks(); ++i) {
                                 out.push_back(unwrap(s.block(i)));
                               }
                               return out;
                             })
      .def("__repr__", [](const TS& s) {
        return "TokenSequence(block_size=" + std::to_string(s.block_size()) +
               ", tokens=" + std::to_string(s.size()) +
               ", blocks=" + std::to_string(s.num_blocks()) + ")";
      });
}

// ---- enums, events, counters ------------------------------------------------------------

void bind_pool_enums(py::module_& m) {
  py::enum_<Tier>(m, "Tier", "G1: GPU (host memory without one), G2: host, G3: disk.")
      .value("G1", Tier::G1)
      .value("G2", Tier::G2)
      .value("G3", Tier::G3);
  py::enum_<BlockState>(m, "BlockState")
      .value("RESET", BlockState::Reset)
      .value("PARTIAL", BlockState::Partial)
      .value("COMPLETE", BlockState::Complete)
      .value("REGISTERED", BlockState::Registered);
  py::enum_<EventKind>(m, "EventKind")
      .value("STORED", EventKind::Stored)
      .value("REMOVED", EventKind::Removed);
  py::class_<Event>(m, "Event",
                    "A sequence hash became matchable on a tier (STORED) or stopped being "
                    "(REMOVED); exactly one per transition.")
      .def_readonly("kind", &Event::kind)
      .def_readonly("tier", &Event::tier)
      .def_readonly("sequence_hash", &Event::sequence_hash)
      .def_readonly("parent_hash", &Event::parent_hash)
      .def(
          "__eq__", [](const Event& a, const Event& b) { return a == b; }, py::is_operator())
      .def("__hash__",
           [](const Event& e) {
             return py::hash(py::make_tuple(static_cast<int>(e.kind), static_cast<int>(e.tier),
                                            e.sequence_hash));
           })
      .def("__repr__", [](const Event& e) {
        return std::string("Event(") + to_string(e.kind) + ", " + to_string(e.tier) + ", " +
               hex(e.sequence_hash) + ")";
      });
}

py::dict pool_counters(const PoolCounters& c) {
  py::dict d;
  d["total_blocks"] = c.total_blocks;
  d["free_blocks"] = c.free_blocks;
  d["inactive_blocks"] = c.inactive_blocks;
  d["active_blocks"] = c.active_blocks;
  d["registered_blocks"] = c.registered_blocks;
  d["stored"] = c.stored;
  d["removed"] = c.removed;
  d["evictions"] = c.evictions;
  d["dedups"] = c.dedups;
  d["lookups"] = c.lookups;
  d["matched_blocks"] = c.matched_blocks;
  return d;
}

py::dict move_counters(const MoveCounters& c) {
  py::dict d;
  d["blocks"] = c.blocks;
  d["bytes"] = c.bytes;
  d["failed_blocks"] = c.failed_blocks;
  return d;
}

py::dict manager_counters(const BlockManagerCounters& c) {
  py::dict d, tiers;
  d["lookups"] = c.lookups;
  for (size_t i = 0; i < kNumTiers; ++i) {
    py::dict t = pool_counters(c.tiers[i].pool);
    t["hit_blocks"] = c.tiers[i].hit_blocks;
    t["hit_tokens"] = c.tiers[i].hit_tokens;
    tiers[to_string(static_cast<Tier>(i))] = t;
  }
  d["tiers"] = tiers;
  d["g1_to_g2"] = move_counters(c.g1_to_g2);
  d["g2_to_g3"] = move_counters(c.g2_to_g3);
  d["g1_to_g3"] = move_counters(c.g1_to_g3);
  d["g2_to_g1"] = move_counters(c.g2_to_g1);
  d["g3_to_g1"] = move_counters(c.g3_to_g1);
  d["dropped_offloads"] = c.dropped_offloads;
  d["queued_offloads"] = c.queued_offloads;
  return d;
}

// ---- block handles and results ----------------------------------------------------------

template <typename Handle>
const Handle& held(const Handle& h) {
  if (h.empty()) {
    throw py::value_error("the block handle is empty (registered, released or moved)");
  }
  return h;
}

void bind_handles(py::module_& m) {
  py::class_<MutableBlock>(m, "MutableBlock",
                           "A G1 block being filled: begin_fill() (RESET -> PARTIAL), write "
                           "its bytes through the G1 layout's views at block_id, complete(key) "
                           "(-> COMPLETE), then BlockManager.register(). Dropping or "
                           "release() frees the block. Illegal transitions raise "
                           "InvalidArgumentError.")
      .def_property_readonly("empty", &MutableBlock::empty)
      .def_property_readonly("block_id", [](const MutableBlock& b) { return held(b).block_id(); })
      .def_property_readonly("tier", [](const MutableBlock& b) { return held(b).tier(); })
      .def_property_readonly("state", [](const MutableBlock& b) { return held(b).state(); })
      .def_property_readonly("key",
                             [](const MutableBlock& b) -> py::object {
                               if (held(b).state() != BlockState::Complete) return py::none();
                               return py::cast(b.key());
                             })
      .def("begin_fill", [](MutableBlock& b) { check(b.begin_fill()); })
      .def(
          "complete", [](MutableBlock& b, const SequenceBlock& k) { check(b.complete(k)); },
          py::arg("key"))
      .def("reset", [](MutableBlock& b) { check(b.reset()); })
      .def("release", &MutableBlock::release)
      .def("__repr__", [](const MutableBlock& b) -> std::string {
        if (b.empty()) return "MutableBlock(empty)";
        return std::string("MutableBlock(") + to_string(b.tier()) + ", " +
               std::to_string(b.block_id()) + ", " + to_string(b.state()) + ")";
      });

  py::class_<ImmutableBlock>(m, "ImmutableBlock",
                             "A reference to a registered block: while one lives the block "
                             "is not evicted. Dropping the last one keeps it matchable until "
                             "its space is needed.")
      .def_property_readonly("empty", &ImmutableBlock::empty)
      .def_property_readonly("block_id", [](const ImmutableBlock& b) { return held(b).block_id(); })
      .def_property_readonly("tier", [](const ImmutableBlock& b) { return held(b).tier(); })
      .def_property_readonly("sequence_hash",
                             [](const ImmutableBlock& b) { return held(b).sequence_hash(); })
      .def_property_readonly("parent_hash",
                             [](const ImmutableBlock& b) { return held(b).parent_hash(); })
      .def("release", &ImmutableBlock::release)
      .def("__repr__", [](const ImmutableBlock& b) -> std::string {
        if (b.empty()) return "ImmutableBlock(empty)";
        return std::string("ImmutableBlock(") + to_string(b.tier()) + ", " +
               std::to_string(b.block_id()) + ", " + hex(b.sequence_hash()) + ")";
      });
}

// A match, which onboard() changes without the GIL.
struct MatchBox {
  std::mutex mu;
  MatchResult match;
};
using MatchPtr = std::shared_ptr<MatchBox>;

std::vector<ImmutableBlock> part_of(MatchBox& b, std::vector<ImmutableBlock> MatchResult::*part) {
  py::gil_scoped_release g;
  std::lock_guard l(b.mu);
  return b.match.*part;  // copies: a reference each
}

size_t match_size(MatchBox& b, std::vector<ImmutableBlock> MatchResult::*part) {
  py::gil_scoped_release g;
  std::lock_guard l(b.mu);
  return part ? (b.match.*part).size() : b.match.blocks();
}

void bind_results(py::module_& m) {
  py::class_<MatchBox, MatchPtr>(m, "MatchResult",
                                 "The longest registered prefix: its G1 blocks, then G2, then "
                                 "G3 (consecutive parts). Its handles keep the blocks from "
                                 "eviction until released or onboarded.")
      .def_property_readonly("g1", [](MatchBox& b) { return part_of(b, &MatchResult::g1); })
      .def_property_readonly("g2", [](MatchBox& b) { return part_of(b, &MatchResult::g2); })
      .def_property_readonly("g3", [](MatchBox& b) { return part_of(b, &MatchResult::g3); })
      .def("__len__", [](MatchBox& b) { return match_size(b, nullptr); })
      .def("release",
           [](MatchBox& b) {
             py::gil_scoped_release g;
             std::lock_guard l(b.mu);
             b.match = {};
           })
      .def("__repr__", [](MatchBox& b) {
        return "MatchResult(g1=" + std::to_string(match_size(b, &MatchResult::g1)) +
               ", g2=" + std::to_string(match_size(b, &MatchResult::g2)) +
               ", g3=" + std::to_string(match_size(b, &MatchResult::g3)) + ")";
      });

  py::class_<OnboardResult>(m, "OnboardResult",
                            "blocks: the usable prefix on G1 (the match's G1 blocks, then "
                            "every onboarded block up to the first failure). failed: sequence "
                            "hashes of the blocks whose copy failed (never served; dropped "
                            "from their tier). error: the first copy error, or None.")
      .def_property_readonly("blocks", [](const OnboardResult& r) { return r.blocks; })
      .def_readonly("failed", &OnboardResult::failed)
      .def_property_readonly("error",
                             [](const OnboardResult& r) -> py::object {
                               if (!r.error) return py::none();
                               return make_exception(*r.error);
                             })
      .def_property_readonly("ok", [](const OnboardResult& r) { return r.failed.empty(); })
      .def("__repr__", [](const OnboardResult& r) {
        return "OnboardResult(blocks=" + std::to_string(r.blocks.size()) +
               ", failed=" + std::to_string(r.failed.size()) + ")";
      });
}

// ---- the configuration ------------------------------------------------------------------

OffloadOptions make_offload(bool enabled, int64_t queue_capacity, int64_t max_batch,
                            int64_t disk_min_hits, double hit_decay_period, int64_t filter_capacity,
                            bool g1_to_g3_bypass) {
  OffloadOptions o;
  o.enabled = enabled;
  o.queue_capacity = index_arg(queue_capacity, "queue_capacity");
  o.max_batch = index_arg(max_batch, "max_batch");
  o.disk_min_hits =
      static_cast<uint32_t>(uint_item(py::int_(disk_min_hits).ptr(), "disk_min_hits", UINT32_MAX));
  o.hit_decay_period = seconds_arg(hit_decay_period, "hit_decay_period");
  o.filter_capacity = index_arg(filter_capacity, "filter_capacity");
  o.g1_to_g3_bypass = g1_to_g3_bypass;
  return o;
}

void bind_offload_options(py::module_& m) {
  const OffloadOptions d;
  py::class_<OffloadOptions>(m, "OffloadOptions",
                             "How blocks move down the tiers: a bounded queue (full: offloads "
                             "are dropped and counted), batches of max_batch blocks, and the "
                             "disk's frequency filter (a block goes to G3 after disk_min_hits "
                             "hits; counts halve every hit_decay_period seconds).")
      .def(py::init(&make_offload), py::kw_only(), py::arg("enabled") = d.enabled,
           py::arg("queue_capacity") = d.queue_capacity, py::arg("max_batch") = d.max_batch,
           py::arg("disk_min_hits") = d.disk_min_hits,
           py::arg("hit_decay_period") = std::chrono::duration<double>(d.hit_decay_period).count(),
           py::arg("filter_capacity") = d.filter_capacity,
           py::arg("g1_to_g3_bypass") = d.g1_to_g3_bypass)
      .def_readwrite("enabled", &OffloadOptions::enabled)
      .def_readwrite("queue_capacity", &OffloadOptions::queue_capacity)
      .def_readwrite("max_batch", &OffloadOptions::max_batch)
      .def_readwrite("disk_min_hits", &OffloadOptions::disk_min_hits)
      .def_property(
          "hit_decay_period",
          [](const OffloadOptions& o) {
            return std::chrono::duration<double>(o.hit_decay_period).count();
          },
          [](OffloadOptions& o, double s) {
            o.hit_decay_period = seconds_arg(s, "hit_decay_period");
          })
      .def_readwrite("filter_capacity", &OffloadOptions::filter_capacity)
      .def_readwrite("g1_to_g3_bypass", &OffloadOptions::g1_to_g3_bypass);
}

std::string path_arg(py::handle p) {
  return py::str(py::module_::import("os").attr("fspath")(p)).cast<std::string>();
}

BlockManagerConfig make_config(const LayoutConfig& block, int64_t g1, int64_t g2, int64_t g3,
                               LayoutKind kind, py::handle disk_dir, bool use_gpu, int device,
                               std::optional<OffloadOptions> offload,
                               std::optional<TransferEngineOptions> engine) {
  BlockManagerConfig c;
  c.block = block;
  c.kind = kind;
  c.g1_blocks = index_arg(g1, "g1_blocks");
  c.g2_blocks = index_arg(g2, "g2_blocks");
  c.g3_blocks = index_arg(g3, "g3_blocks");
  if (!disk_dir.is_none()) c.disk_dir = path_arg(disk_dir);
  c.use_gpu = use_gpu;
  c.device = device;
  if (offload) c.offload = *offload;
  if (engine) c.engine = *engine;
  return c;
}

void bind_pool_config(py::module_& m) {
  using C = BlockManagerConfig;
  py::class_<C>(m, "BlockManagerConfig",
                "The tiers of a BlockManager: one block's shape (block; its num_blocks is "
                "ignored, page_size is the tokens per block), blocks per tier (0 leaves G2 "
                "or G3 out), G3's directory, G1 on GPU `device` when use_gpu and a GPU is "
                "usable (else host memory stands in), offload and engine options.")
      .def(py::init(&make_config), py::arg("block"), py::kw_only(), py::arg("g1_blocks") = 0,
           py::arg("g2_blocks") = 0, py::arg("g3_blocks") = 0,
           py::arg("kind") = LayoutKind::FullyContiguous, py::arg("disk_dir") = py::none(),
           py::arg("use_gpu") = true, py::arg("device") = 0, py::arg("offload") = py::none(),
           py::arg("engine") = py::none())
      .def_readwrite("block", &C::block)
      .def_readwrite("kind", &C::kind)
      .def_readwrite("g1_blocks", &C::g1_blocks)
      .def_readwrite("g2_blocks", &C::g2_blocks)
      .def_readwrite("g3_blocks", &C::g3_blocks)
      .def_property(
          "disk_dir",
          [](const C& c) -> py::object {
            if (c.disk_dir.empty()) return py::none();
            return py::str(c.disk_dir.string());
          },
          [](C& c, py::handle p) { c.disk_dir = p.is_none() ? std::string() : path_arg(p); })
      .def_readwrite("use_gpu", &C::use_gpu)
      .def_readwrite("device", &C::device)
      .def_readwrite("offload", &C::offload)
      .def_readwrite("engine", &C::engine)
      .def_property_readonly("block_bytes", [](const C& c) { return block_bytes(c.block); })
      .def(
          "apply_env_overrides", [](C& c) { check(apply_env_overrides(c)); },
          "Sets g2_blocks from KVBM_CPU_CACHE_GB and g3_blocks from KVBM_DISK_CACHE_GB (GiB, "
          "decimal) where set; InvalidArgumentError naming a bad value.")
      .def("__repr__", [](const C& c) {
        return "BlockManagerConfig(g1_blocks=" + std::to_string(c.g1_blocks) +
               ", g2_blocks=" + std::to_string(c.g2_blocks) +
               ", g3_blocks=" + std::to_string(c.g3_blocks) +
               ", block_bytes=" + std::to_string(block_bytes(c.block)) + ")";
      });
}

// ---- the manager and its pools ----------------------------------------------------------

struct ManagerBox {
  std::vector<LayoutPtr> given;        // layouts the manager aliases (g1=, g2=, g3=); outlive it
  std::unique_ptr<EventQueue> events;  // with events=True; outlives the manager
  std::unique_ptr<BlockManager> manager;
  ~ManagerBox() {
    MaybeReleaseGil g;  // joins the offload thread
    manager.reset();
  }
  void need(Tier t) const {
    if (!manager->has_tier(t)) {
      throw py::value_error(std::string("this block manager has no ") + to_string(t) + " tier");
    }
  }
};
using ManagerPtr = std::shared_ptr<ManagerBox>;

// One tier's pool; keeps its manager alive.
struct PoolRef {
  ManagerPtr owner;
  BlockPool* pool;
};

ManagerPtr make_manager(BlockManagerConfig config, bool events, py::handle g1, py::handle g2,
                        py::handle g3) {
  auto box = std::make_shared<ManagerBox>();
  if (events) {
    box->events = std::make_unique<EventQueue>();
    config.on_event = box->events->callback();
  }
  TierLayouts given;
  const std::pair<py::handle, std::optional<Layout>*> tiers[] = {
      {g1, &given.g1}, {g2, &given.g2}, {g3, &given.g3}};
  const char* names[] = {"g1", "g2", "g3"};
  for (size_t i = 0; i < 3; ++i) {
    if (tiers[i].first.is_none()) continue;
    box->given.push_back(cast_arg<LayoutPtr>(tiers[i].first, names[i], "a kvbm.Layout"));
    *tiers[i].second = unwrap(alias_layout(*box->given.back()->layout));
  }
  auto r = [&] {
    py::gil_scoped_release g;
    return BlockManager::create(std::move(config), std::move(given));
  }();
  box->manager = unwrap(std::move(r));
  return box;
}

LayoutPtr tier_layout(const ManagerPtr& b, Tier t, py::handle dtype) {
  b->need(t);
  auto box = std::make_shared<LayoutBox>();
  box->layout = std::shared_ptr<Layout>(b, &b->manager->layout(t));
  box->dtype = view_dtype(box->layout->config(), dtype);
  return box;
}

std::vector<MutableBlock> allocate(ManagerBox& b, int64_t n) {
  const size_t count = index_arg(n, "n");
  py::gil_scoped_release g;
  return unwrap(b.manager->allocate(count));
}

MatchPtr match(ManagerBox& b, py::handle hashes) {
  auto h = uints_arg<uint64_t>(hashes, "sequence_hashes");
  auto r = std::make_shared<MatchBox>();
  py::gil_scoped_release g;
  r->match = b.manager->match(h);
  return r;
}

OnboardResult onboard(ManagerBox& b, MatchBox& match) {
  py::gil_scoped_release g;
  std::lock_guard l(match.mu);
  return unwrap(b.manager->onboard(match.match));
}

void bind_pool_ref(py::module_& m) {
  py::class_<PoolRef>(m, "BlockPool",
                      "The bookkeeping of one tier's blocks (BlockManager.pool(tier)): free "
                      "list, inactive set, hash map. Thread-safe.")
      .def_property_readonly("tier", [](const PoolRef& p) { return p.pool->tier(); })
      .def_property_readonly("num_blocks", [](const PoolRef& p) { return p.pool->num_blocks(); })
      .def(
          "contains",
          [](const PoolRef& p, py::handle h) {
            return p.pool->contains(hash_arg(h, "sequence_hash"));
          },
          py::arg("sequence_hash"), "True when the hash is registered here (no lookup counted).")
      .def(
          "remove", [](const PoolRef& p, const ImmutableBlock& b) { p.pool->remove(held(b)); },
          py::arg("block"),
          "Makes a block of this pool unmatchable now (one REMOVED event); its space is "
          "freed when its last handle goes.")
      .def(
          "clear_inactive",
          [](const PoolRef& p) {
            py::gil_scoped_release g;
            return p.pool->clear_inactive();
          },
          "Evicts every registered block nobody holds; returns how many.")
      .def("counters", [](const PoolRef& p) { return pool_counters(p.pool->counters()); })
      .def_property_readonly("bookkeeping_bytes",
                             [](const PoolRef& p) { return p.pool->bookkeeping_bytes(); });
}

void bind_manager(py::module_& m) {
  py::class_<ManagerBox, ManagerPtr>(
      m, "BlockManager",
      "Block pools on G1 (GPU, or host memory without one), G2 (host) and G3 (disk): "
      "allocate and register G1 blocks (offloaded down the tiers in the background), match "
      "a prefix of sequence hashes across the tiers, onboard G2/G3 hits to G1. A block's "
      "bytes live at its block_id in layout(tier). Thread-safe.")
      .def(py::init(&make_manager), py::arg("config"), py::kw_only(), py::arg("events") = false,
           py::arg("g1") = py::none(), py::arg("g2") = py::none(), py::arg("g3") = py::none(),
           "events=True records every tier's STORED/REMOVED events for events(). g1, g2, "
           "g3: Layouts the caller made (g1: an engine's paged KV cache, see ExternalG1) to "
           "use instead of allocating the tier; the manager keeps them alive.")
      .def("has_tier", [](const ManagerBox& b, Tier t) { return b.manager->has_tier(t); })
      .def_property_readonly("tiers",
                             [](const ManagerBox& b) {
                               std::vector<Tier> out;
                               for (Tier t : {Tier::G1, Tier::G2, Tier::G3}) {
                                 if (b.manager->has_tier(t)) out.push_back(t);
                               }
                               return out;
                             })
      .def_property_readonly("block_size",
                             [](const ManagerBox& b) { return b.manager->block_size(); })
      .def("layout", &tier_layout, py::arg("tier"), py::arg("dtype") = py::none(),
           "The tier's layout as a kvbm.Layout (aliasing the manager's, which it keeps "
           "alive); `dtype` is the element type of its views.")
      .def(
          "pool",
          [](const ManagerPtr& b, Tier t) {
            b->need(t);
            return PoolRef{b, &b->manager->pool(t)};
          },
          py::arg("tier"))
      .def("allocate", &allocate, py::arg("n"),
           "n RESET blocks on G1, all or none (AllocationFailedError).")
      .def(
          "register",
          [](ManagerBox& b, MutableBlock& blk, int64_t priority) {
            auto p =
                static_cast<uint32_t>(uint_item(py::int_(priority).ptr(), "priority", UINT32_MAX));
            return unwrap(b.manager->register_block(blk, p));
          },
          py::arg("block"), py::arg("priority") = 0,
          "Registers a COMPLETE G1 block (the handle becomes empty) and queues its offload; "
          "returns the registered block, or the one already registered under its hash "
          "(dedup). Higher priorities are evicted later.")
      .def("match", &match, py::arg("sequence_hashes"),
           "The longest registered prefix: on G1, then G2 for the rest, then G3. No I/O.")
      .def("onboard", &onboard, py::arg("match"),
           "Copies the match's G2 and G3 blocks into new G1 blocks and registers them; the "
           "match is empty afterwards. AllocationFailedError when G1 has no room "
           "(nothing copied); failed copies are reported in the result.")
      .def(
          "flush",
          [](ManagerBox& b, double timeout) {
            auto ms = seconds_arg(timeout, "timeout");
            py::gil_scoped_release g;
            check(b.manager->flush(ms));
          },
          py::arg("timeout") = 60.0,
          "Waits until no offload is queued or in flight (kvbm.TimeoutError after timeout "
          "seconds).")
      .def(
          "counters", [](const ManagerBox& b) { return manager_counters(b.manager->counters()); },
          "A snapshot of every counter as a dict: lookups, tiers['G1'|'G2'|'G3'] (hits and "
          "pool counters), the moves g1_to_g2, g2_to_g3, g1_to_g3, g2_to_g1, g3_to_g1 "
          "(blocks, bytes, failed_blocks), dropped_offloads, queued_offloads.")
      .def(
          "events",
          [](ManagerBox& b) {
            if (!b.events) throw py::value_error("the block manager was made without events=True");
            return b.events->drain();
          },
          "Returns and clears the events recorded so far, in order per tier.");
}

// ---- an engine-owned G1 (kvbm/pool/external_g1.h) ---------------------------------------

struct ExternalBox {
  ManagerPtr owner;
  std::unique_ptr<ExternalG1> x;
  ~ExternalBox() {
    MaybeReleaseGil g;
    x.reset();
  }
};
using ExternalPtr = std::shared_ptr<ExternalBox>;

// An operation; waits (without the GIL) for its copies when dropped unfinished.
template <typename Op>
struct OpBox {
  ExternalPtr owner;
  std::mutex mu;
  std::optional<Op> op;
  ~OpBox() {
    MaybeReleaseGil g;
    op.reset();
  }
};
using SavePtr = std::shared_ptr<OpBox<ExternalSave>>;
using LoadPtr = std::shared_ptr<OpBox<ExternalLoad>>;

// Hashes [first, first + count) of a TokenSequence (count None: to its end), or of a
// sequence of hashes.
std::vector<SequenceHash> hashes_of(py::handle obj, int64_t first, py::handle count) {
  std::vector<SequenceHash> all;
  std::span<const SequenceHash> from;
  if (py::isinstance<TokenSequence>(obj)) {
    from = obj.cast<const TokenSequence&>().sequence_hashes();
  } else {
    all = uints_arg<uint64_t>(obj, "sequence");
    from = all;
  }
  const size_t f = std::min(index_arg(first, "first_block"), from.size());
  size_t n = from.size() - f;
  if (!count.is_none())
    n = std::min(n, index_arg(cast_arg<int64_t>(count, "count", "an int"), "count"));
  return {from.begin() + f, from.begin() + f + n};
}

ExternalPeek peek_seq(ExternalBox& b, py::handle seq, int64_t first, py::handle count) {
  if (py::isinstance<TokenSequence>(seq)) {  // no copy of the hashes
    auto h = seq.cast<const TokenSequence&>().sequence_hashes();
    const size_t f = std::min(index_arg(first, "first_block"), h.size());
    size_t n = h.size() - f;
    if (!count.is_none()) {
      n = std::min(n, index_arg(cast_arg<int64_t>(count, "count", "an int"), "count"));
    }
    return b.x->peek(h.subspan(f, n));
  }
  auto h = hashes_of(seq, first, count);
  return b.x->peek(h);
}

SavePtr save_blocks(const ExternalPtr& b, py::handle ids, const TokenSequence& seq, int64_t first) {
  auto engine_ids = to_ids(ids, "engine_ids");
  const size_t f = index_arg(first, "first_block");
  if (f + engine_ids.size() > seq.num_blocks()) {
    throw py::value_error("blocks " + std::to_string(f) + ".." +
                          std::to_string(f + engine_ids.size()) + " are past the sequence's " +
                          std::to_string(seq.num_blocks()) + " full blocks");
  }
  std::vector<SequenceBlock> keys;
  keys.reserve(engine_ids.size());
  for (size_t i = 0; i < engine_ids.size(); ++i) keys.push_back(unwrap(seq.block(f + i)));
  auto box = std::make_shared<OpBox<ExternalSave>>();
  box->owner = b;
  py::gil_scoped_release g;
  box->op.emplace(unwrap(b->x->save(engine_ids, keys)));
  return box;
}

LoadPtr load_blocks(const ExternalPtr& b, py::handle seq, py::handle ids, int64_t first) {
  auto engine_ids = to_ids(ids, "engine_ids");
  auto h = hashes_of(seq, first, py::int_(engine_ids.size()));
  if (h.size() != engine_ids.size()) {
    throw py::value_error(std::to_string(engine_ids.size()) + " engine block ids for " +
                          std::to_string(h.size()) + " hashes from block " + std::to_string(first));
  }
  auto box = std::make_shared<OpBox<ExternalLoad>>();
  box->owner = b;
  py::gil_scoped_release g;
  box->op.emplace(unwrap(b->x->load(h, engine_ids)));
  return box;
}

template <typename Op, typename F>
auto with_op(OpBox<Op>& b, F f) {
  py::gil_scoped_release g;
  std::lock_guard l(b.mu);
  return f(*b.op);
}

py::dict save_result(const SaveResult& r) {
  py::dict d;
  d["saved"] = r.saved;
  d["present"] = r.present;
  d["dropped"] = r.dropped;
  d["error"] = r.error ? make_exception(*r.error) : py::none();
  return d;
}

py::dict load_result(const LoadResult& r) {
  py::dict d;
  d["loaded"] = r.loaded;
  d["failed_ids"] = r.failed_ids;
  d["error"] = r.error ? make_exception(*r.error) : py::none();
  return d;
}

void bind_external_ops(py::module_& m) {
  using S = OpBox<ExternalSave>;
  using L = OpBox<ExternalLoad>;
  py::class_<S, SavePtr>(m, "ExternalSave",
                         "A save of engine blocks into G2 (ExternalG1.save). finish() waits, "
                         "registers the copies and returns {saved, present, dropped, error}.")
      .def("ready", [](S& b) { return with_op(b, [](ExternalSave& s) { return s.ready(); }); })
      .def("finish", [](S& b) {
        return save_result(with_op(b, [](ExternalSave& s) { return s.finish(); }));
      });
  py::class_<L, LoadPtr>(m, "ExternalLoad",
                         "A layer-wise load into engine block ids (ExternalG1.load). "
                         "finish() waits for every layer and returns {loaded, failed_ids, "
                         "error}; failed_ids name the engine blocks whose bytes did not "
                         "arrive.")
      .def_property_readonly("num_layers", [](L& b) { return b.op->num_layers(); })
      .def_property_readonly("blocks", [](L& b) { return b.op->blocks(); })
      .def(
          "wait_layer",
          [](L& b, int64_t layer) {
            const size_t l = index_arg(layer, "layer");
            check(with_op(b, [&](ExternalLoad& x) { return x.wait_layer(l); }));
          },
          py::arg("layer"),
          "Waits until `layer` of every block is in; raises the kvbm.Error of its copy.")
      .def("ready", [](L& b) { return with_op(b, [](ExternalLoad& x) { return x.ready(); }); })
      .def("finish", [](L& b) {
        return load_result(with_op(b, [](ExternalLoad& x) { return x.finish(); }));
      });
}

void bind_external_g1(py::module_& m) {
  bind_external_ops(m);
  py::class_<ExternalBox, ExternalPtr>(
      m, "ExternalG1",
      "A block manager whose G1 is an engine's paged KV cache (BlockManager(config, g1=...), "
      "every tier LAYER_SEPARATE): side-effect-free peek, save of engine block ids into G2, "
      "layer-wise load into engine block ids. Thread-safe.")
      .def(py::init([](const ManagerPtr& mgr) {
             auto b = std::make_shared<ExternalBox>();
             b->owner = mgr;
             b->x = unwrap(ExternalG1::create(*mgr->manager));
             return b;
           }),
           py::arg("manager"))
      .def_property_readonly("num_layers", [](const ExternalBox& b) { return b.x->num_layers(); })
      .def_property_readonly("engine_blocks",
                             [](const ExternalBox& b) { return b.x->engine_blocks(); })
      .def(
          "peek",
          [](ExternalBox& b, py::handle seq, int64_t first, py::handle count) {
            ExternalPeek p = peek_seq(b, seq, first, count);
            return py::make_tuple(p.g2, p.g3);
          },
          py::arg("sequence"), py::arg("first_block") = 0, py::arg("count") = py::none(),
          "(g2, g3): how many consecutive blocks from first_block (at most count) a load "
          "would find on G2, then G3. sequence: a TokenSequence or sequence hashes. No "
          "handle, counter, event or I/O.")
      .def("save", &save_blocks, py::arg("engine_ids"), py::arg("sequence"),
           py::arg("first_block") = 0,
           "Copies engine_ids[i] into G2 under the key of block first_block + i of the "
           "TokenSequence; returns an ExternalSave.")
      .def("load", &load_blocks, py::arg("sequence"), py::arg("engine_ids"),
           py::arg("first_block") = 0,
           "Loads blocks first_block.. of the sequence (a TokenSequence or hashes) into "
           "engine_ids, one engine request per layer and source tier in layer order; returns "
           "an ExternalLoad.");
}

}  // namespace

void bind_pool(py::module_& m) {
  bind_hashes(m);
  bind_token_sequence(m);
  bind_pool_enums(m);
  bind_handles(m);
  bind_results(m);
  bind_offload_options(m);
  bind_pool_config(m);
  bind_pool_ref(m);
  bind_manager(m);
  bind_external_g1(m);
}

}  // namespace kvbm::python
