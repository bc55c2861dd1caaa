// Which sanitizer this translation unit is built under, asked the same way of GCC (which
// defines __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__) and clang (which answers
// __has_feature instead).
#pragma once

#if defined(__SANITIZE_THREAD__)
#define KVBM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVBM_TSAN 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KVBM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVBM_ASAN 1
#endif
#endif

// Leaves a function out of ThreadSanitizer's instrumentation (nothing elsewhere).
#if defined(KVBM_TSAN)
#define KVBM_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define KVBM_NO_TSAN
#endif
