// KVBM_API: what libkvbm exports. The library is built with hidden visibility, so a class
// or function declared in these headers and defined in the library is reachable from a
// program only when its declaration carries KVBM_API (scripts/check-exports checks the
// converse: that libkvbm exports nothing else).
#pragma once

/// Marks a class or function of the public API, exported from the shared libkvbm.
#define KVBM_API __attribute__((visibility("default")))
