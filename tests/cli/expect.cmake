# Runs a command and checks its exit status and its output (stdout and stderr together);
# ctest's own properties check one or the other, not both.
#   cmake -DCMD=<program> "-DARGS=a|b|c" -DSTATUS=zero|nonzero "-DLINES=re1@@re2" -P expect.cmake
# Each regex in LINES must match some line of the output.
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND ${CMD} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 110)
set(text "${out}${err}")
message("${text}")
if(STATUS STREQUAL "zero" AND NOT rc EQUAL 0)
  message(FATAL_ERROR "expected exit status 0, got ${rc}")
elseif(STATUS STREQUAL "nonzero" AND rc EQUAL 0)
  message(FATAL_ERROR "expected a nonzero exit status, got 0")
endif()
string(REPLACE ";" "," text "${text}")
string(REPLACE "\n" ";" lines "${text}")
string(REPLACE "@@" ";" regexes "${LINES}")
foreach(re IN LISTS regexes)
  set(found FALSE)
  foreach(line IN LISTS lines)
    if(line MATCHES "${re}")
      set(found TRUE)
      break()
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "no line of the output matches: ${re}")
  endif()
endforeach()
