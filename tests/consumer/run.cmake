# Installs the kvbm build into a scratch prefix (not a system one), then uses it the ways a
# user would: find_package(kvbm) with the CUDA toolkit hidden (a CUDA-built kvbm must not
# need it), pkg-config, and the installed `kvbm` binary started from the prefix with no
# library path set (its RPATH finds libkvbm). Fails on any step.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()
set(sanitize_flags "")
if(SANITIZE)  # an instrumented libkvbm needs an instrumented executable
  set(sanitize_flags "-fsanitize=${SANITIZE}")
endif()
step(${CMAKE_COMMAND} --install ${KVBM_BUILD_DIR} --prefix ${prefix})

# 1. CMake, with no CUDA to be found.
step(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -G Ninja
     -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON
     -DCUDAToolkit_ROOT=/nonexistent "-DCMAKE_CXX_FLAGS=${sanitize_flags}")
step(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
step(${WORK_DIR}/build/consumer)

# 2. pkg-config: the flags it gives build and link the same program.
step(${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${prefix}/${LIBDIR}/pkgconfig pkg-config --cflags --libs kvbm)
string(STRIP "${step_output}" pc_flags)
if(NOT pc_flags MATCHES "-I.*include" OR NOT pc_flags MATCHES "-lkvbm")
  message(FATAL_ERROR "pkg-config --cflags --libs kvbm gave '${pc_flags}'")
endif()
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
step(${CXX} -std=c++20 ${sanitize_flags} ${CONSUMER_SOURCE_DIR}/main.cc ${pc_flags}
     -Wl,-rpath,${prefix}/${LIBDIR} -o ${WORK_DIR}/consumer_pc)
step(${WORK_DIR}/consumer_pc)

# 3. The installed command, from the prefix, without LD_LIBRARY_PATH.
if(EXISTS ${prefix}/bin/kvbm)
  step(${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${prefix}/bin/kvbm --version)
  if(NOT step_output MATCHES "^kvbm [0-9]+\\.[0-9]+\\.[0-9]+")
    message(FATAL_ERROR "installed kvbm --version printed '${step_output}'")
  endif()
endif()
