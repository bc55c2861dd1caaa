// The remote layer: storages registered with an agent, described to other nodes.
#pragma once

#include "kvbm/remote/agent_registration.h"
#include "kvbm/remote/descriptor_exchange.h"
#include "kvbm/remote/remote_descriptor.h"
#include "kvbm/remote/remote_storage.h"
#include "kvbm/xfer/mem_type.h"
