// The xfer (agent) layer: named agents that register memory and READ/WRITE their peers',
// by descriptors; it knows nothing of blocks. Not to be confused with the transfer (block)
// layer, kvbm/transfer.h, which copies blocks between layouts (docs/glossary.md).
#pragma once

#include "kvbm/xfer/agent.h"
#include "kvbm/xfer/mem_type.h"
#include "kvbm/xfer/types.h"
