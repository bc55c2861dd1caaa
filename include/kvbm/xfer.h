// The transfer layer: named agents that register memory and READ/WRITE their peers'.
#pragma once

#include "kvbm/xfer/agent.h"
#include "kvbm/xfer/mem_type.h"
#include "kvbm/xfer/types.h"
