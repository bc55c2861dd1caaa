// The storage layer: memory regions on every tier and their allocators.
#pragma once

#include "kvbm/cuda.h"
#include "kvbm/result.h"
#include "kvbm/storage/device.h"
#include "kvbm/storage/disk.h"
#include "kvbm/storage/null.h"
#include "kvbm/storage/pinned.h"
#include "kvbm/storage/registration.h"
#include "kvbm/storage/storage.h"
#include "kvbm/storage/storage_type.h"
#include "kvbm/storage/system.h"
