# `find_package(kvbm)` support: installs the library, headers and kvbm::kvbm.
include(CMakePackageConfigHelpers)

install(TARGETS kvbm EXPORT kvbmTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/kvbm DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} PATTERN "*.in" EXCLUDE)
install(FILES ${PROJECT_BINARY_DIR}/include/kvbm/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvbm)
if(TARGET kvbm_cli)
  install(TARGETS kvbm_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

install(EXPORT kvbmTargets NAMESPACE kvbm:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvbm)
configure_package_config_file(cmake/kvbmConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/kvbmConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvbm)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/kvbmConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kvbmConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/kvbmConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvbm)

# pkg-config (kvbm.pc) for builds without CMake; its prefix is relative to where it lies.
file(RELATIVE_PATH KVBM_PC_TO_PREFIX ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
configure_file(cmake/kvbm.pc.in ${CMAKE_CURRENT_BINARY_DIR}/kvbm.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kvbm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
