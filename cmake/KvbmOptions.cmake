# Warnings and sanitizers for every kvbm target (kvbm_options is linked privately).
add_library(kvbm_options INTERFACE)
target_compile_options(kvbm_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>)
# GCC 12 at -O3 reports -Wrestrict inside libstdc++'s own string concatenation (GCC bug
# 105329, fixed in 13): a false positive in the standard library, not in kvbm.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(kvbm_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
endif()
# In a unity build every source is included into another, and GCC then reports a class of
# one file holding a type of that file's anonymous namespace as if a header did it
# (-Wsubobject-linkage): true for headers only, which the file-by-file build still checks.
if(CMAKE_UNITY_BUILD AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(kvbm_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-subobject-linkage>)
endif()

if(KVBM_SANITIZE)
  target_compile_options(kvbm_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${KVBM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(kvbm_options INTERFACE -fsanitize=${KVBM_SANITIZE})
endif()
