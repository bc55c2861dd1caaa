# Warnings and sanitizers for every kvbm target (kvbm_options is linked privately).
add_library(kvbm_options INTERFACE)
target_compile_options(kvbm_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>)

if(KVBM_SANITIZE)
  target_compile_options(kvbm_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${KVBM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(kvbm_options INTERFACE -fsanitize=${KVBM_SANITIZE})
endif()
