// The block manager layer: token sequences and Dynamo-compatible sequence hashes, block
// pools per tier with prefix match and eviction, and the block manager that offloads and
// onboards blocks between G1 (GPU), G2 (host) and G3 (disk). Built on kvbm/transfer.h.
#pragma once

#include "kvbm/pool/block.h"
#include "kvbm/pool/block_manager.h"
#include "kvbm/pool/block_pool.h"
#include "kvbm/pool/config.h"
#include "kvbm/pool/events.h"
#include "kvbm/pool/external_g1.h"
#include "kvbm/pool/hash.h"
#include "kvbm/pool/layout_alias.h"
#include "kvbm/pool/token_sequence.h"
