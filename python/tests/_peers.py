"""Code the two-process tests run in a spawned child (multiprocessing, spawn)."""

import numpy as np

import kvbm


def pattern(n: int, seed: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint64) * 131 + seed) % 251).astype(np.uint8)


def writer(host: str, port: int, key: str, nbytes: int) -> None:
    """Fetches the descriptor published under `key` (metadata comes with it) and WRITEs
    a pattern into it, with the descriptor's notification."""
    agent = kvbm.Agent("writer")
    desc = agent.fetch_descriptor(host, port, key, timeout=20)
    assert desc.size == nbytes, desc
    src = kvbm.SystemAllocator().allocate(nbytes)
    src.view().numpy()[:] = pattern(nbytes, 7)
    agent.register(src)
    agent.write(src, desc).wait(timeout=30)
