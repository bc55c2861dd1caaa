#!/usr/bin/python3
"""What an inference server does with kvbm, in Python: its KV cache lives on the GPU;
when GPU memory runs short it offloads blocks to a host tier and on to a disk tier, and
before they are needed again it onboards them, disk -> GPU in one request. All tiers
share one block shape, so a block id is all it takes to move a block. Without a GPU,
host memory stands in for GPU memory and every step is the same.

Run: PYTHONPATH=build/default/python /usr/bin/python3 examples/python/offload_onboard.py
(exit status 0 when every block came back)
"""

import asyncio
import sys

import numpy as np

import kvbm


def main() -> int:
    # 16 tokens x 8 heads x 128 dims, float16: 32 KiB per chunk; K and V; 4 layers.
    config = kvbm.LayoutConfig(num_blocks=32, num_layers=4, outer_dim=2, page_size=16,
                               inner_dim=1024, dtype_bytes=2, alignment=4096)
    gpu = kvbm.gpu_count() > 0
    # The GPU cache as the model sees it (one region per layer), a smaller host tier, a
    # larger disk tier; each layout owns its memory (or file).
    gpu_cache = kvbm.Layout.allocate(config, kvbm.DeviceAllocator(0) if gpu else kvbm.SystemAllocator(),
                                     kind=kvbm.LayoutKind.LAYER_SEPARATE, dtype="float16")
    host = kvbm.Layout.allocate(config.replace(num_blocks=16),
                                kvbm.PinnedAllocator() if gpu else kvbm.SystemAllocator(),
                                dtype="float16")
    disk = kvbm.Layout.allocate(config.replace(num_blocks=128), kvbm.DiskAllocator())
    engine = kvbm.TransferEngine()
    engine.register_host_layout(host)  # optional: fixed io_uring buffers for disk I/O
    print(f"GPU cache: {'GPU 0' if gpu else 'host memory (no GPU here)'}")

    # Stand-in for prefill: 8 blocks of known content (written through numpy views of the
    # host tier) land in GPU blocks 10..17.
    rng = np.random.default_rng(0)
    host_blocks = host.view().numpy()  # (blocks, layers, K/V, tokens, 1024) float16
    host_blocks[:8] = rng.standard_normal(host_blocks[:8].shape).astype(np.float16)
    want = host_blocks[:8].copy()
    engine.copy(host, range(8), gpu_cache, range(10, 18)).wait()

    # Memory runs short: offload GPU 10..17 to host 8..15, then on to disk 40..47 (awaited,
    # as an asyncio server would).
    async def offload():
        t = engine.copy(gpu_cache, range(10, 18), host, range(8, 16))
        await t
        await engine.copy(host, range(8, 16), disk, range(40, 48))
        return t.path
    print(f"offload GPU -> host ({asyncio.run(offload()).name} path) -> disk")

    # The GPU blocks and host copies are reused for other work (here: overwritten).
    host_blocks[:] = 0
    engine.copy(host, range(8), gpu_cache, range(10, 18)).wait()

    # The request comes back: onboard disk 40..47 straight into GPU blocks 20..27, then
    # check them by copying them out to the host tier.
    t = engine.copy(disk, range(40, 48), gpu_cache, range(20, 28))
    t.wait()
    print(f"onboard disk -> GPU: {t.bytes >> 20} MiB, {t.path.name} path")
    engine.copy(gpu_cache, range(20, 28), host, range(8)).wait()
    if not np.array_equal(host_blocks[:8], want):
        print("blocks did not come back intact", file=sys.stderr)
        return 1
    print("OK: 8 blocks went GPU -> host -> disk -> GPU intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
