// Nesting-depth guards for decoders of untrusted CBOR and JSON (remote descriptors, layouts).
//
// nlohmann's CBOR reader recurses once per nested array, map or tag, and dump() recurses
// once per JSON level, so half a megabyte of nested containers overflows the stack. These
// scans walk the input without recursion; a decoder calls them before parsing and rejects
// input that nests deeper than it ever needs.
#pragma once

#include <cstddef>
#include <string_view>

namespace kvbm::detail {

// True when CBOR containers (arrays, maps, tags) nest deeper than `max_depth`. Input the
// scan cannot follow is malformed and left to the decoder to reject: it fails there no
// deeper than here.
bool cbor_nests_deeper_than(std::string_view in, size_t max_depth);

// True when JSON arrays and objects nest deeper than `max_depth` (brackets inside strings
// do not count).
bool json_nests_deeper_than(std::string_view in, size_t max_depth);

}  // namespace kvbm::detail
