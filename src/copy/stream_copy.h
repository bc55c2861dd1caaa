// Copies that bypass the CPU caches (non-temporal stores). A plain store first reads the
// destination line into the cache (read for ownership), so a copy much larger than the
// caches moves each destination byte twice; streaming stores move it once. glibc's memcpy
// switches to them only for single calls above a few MiB, which a job of scattered KV
// chunks never makes, so the host pool calls this for large jobs instead.
#pragma once

#include <cstddef>

namespace kvbm::detail {

// Copies n bytes with streaming stores where the CPU has them (x86-64), memcpy elsewhere.
// Any alignment. The stores are weakly ordered: call stream_fence() before publishing.
void stream_copy(void* dst, const void* src, size_t n);
void stream_fence();

}  // namespace kvbm::detail
