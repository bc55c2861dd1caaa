# Runs a command whose stdout must be one JSON document, and checks its exit status and
# members.
#   cmake -DCMD=<program> "-DARGS=a|b" -DSTATUS=<number> "-DKEYS=a|b@@c" ["-DEQUALS=k|v"]
#         -P expect_json.cmake
# Each entry of KEYS is a path of members ("items|UCX") that must exist; EQUALS names one
# member path and the value it must have (its last element).
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND ${CMD} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 110)
message("stdout:\n${out}\nstderr:\n${err}")
if(NOT rc EQUAL STATUS)
  message(FATAL_ERROR "expected exit status ${STATUS}, got ${rc}")
endif()
string(JSON type ERROR_VARIABLE json_error TYPE "${out}")
if(json_error OR NOT type STREQUAL "OBJECT")
  message(FATAL_ERROR "stdout is not one JSON object: ${json_error}")
endif()
string(REPLACE "@@" ";" paths "${KEYS}")
foreach(path IN LISTS paths)
  string(REPLACE "|" ";" members "${path}")
  string(JSON value ERROR_VARIABLE json_error GET "${out}" ${members})
  if(json_error)
    message(FATAL_ERROR "no member ${path}: ${json_error}")
  endif()
endforeach()
if(EQUALS)
  string(REPLACE "|" ";" members "${EQUALS}")
  list(POP_BACK members expected)
  string(JSON value ERROR_VARIABLE json_error GET "${out}" ${members})
  if(NOT value STREQUAL expected)
    message(FATAL_ERROR "${EQUALS}: found '${value}' ${json_error}")
  endif()
endif()
