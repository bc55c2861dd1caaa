#include "kvbm/version.h"

namespace kvbm {

const char* version() {
  return KVBM_VERSION_STRING;
}

Version version_numbers() {
  return {KVBM_VERSION_MAJOR, KVBM_VERSION_MINOR, KVBM_VERSION_PATCH};
}

}  // namespace kvbm
