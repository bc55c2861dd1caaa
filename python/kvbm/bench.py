"""kvbm's Python overhead against its C++ engine, measured in the same run.

    /usr/bin/python3 -m kvbm.bench [--iterations N] [--gib G] [--repeat R]

1. Per-call cost of a 1-block host copy (copy() + wait() from Python) against the same
   loop run in C++ by kvbm._kvbm._bench_copy over the same layouts and blocks (the best
   of R alternating rounds of N calls each).
2. A G GiB host -> host copy of 256 KiB blocks from Python against the C++ figure for
   the same blocks (best of R rounds each); the ratio is Python / C++.
"""

import argparse
import time

from . import _kvbm
from ._kvbm import LayoutConfig, Layout, SystemAllocator, TransferEngine


def _py_loop(engine, src, ids, dst, iterations):
    t0 = time.perf_counter()
    for _ in range(iterations):
        engine.copy(src, ids, dst, ids).wait()
    return time.perf_counter() - t0


def per_call(engine, iterations, rounds):
    config = LayoutConfig(num_blocks=4, num_layers=2, outer_dim=2, page_size=16, inner_dim=128,
                          dtype_bytes=2)  # 16 KiB blocks
    src = Layout.allocate(config, SystemAllocator())
    dst = Layout.allocate(config, SystemAllocator())
    ids = [1]
    _py_loop(engine, src, ids, dst, iterations // 10 + 1)  # warm up
    py = cc = float("inf")
    for _ in range(rounds):  # alternate, so a slow spell of the machine falls on both
        py = min(py, _py_loop(engine, src, ids, dst, iterations))
        cc = min(cc, _kvbm._bench_copy(engine, src, ids, dst, ids, iterations))
    return py / iterations * 1e6, cc / iterations * 1e6


def bulk(engine, gib, repeat):
    block = 256 << 10
    config = LayoutConfig(num_blocks=int(gib * (1 << 30)) // block, num_layers=2, outer_dim=2,
                          page_size=16, inner_dim=2048, dtype_bytes=2)
    src = Layout.allocate(config, SystemAllocator())
    dst = Layout.allocate(config, SystemAllocator())
    ids = list(range(config.num_blocks))
    engine.copy(src, ids, dst, ids).wait()  # fault the pages in
    nbytes = config.num_blocks * block
    py = cc = float("inf")
    for _ in range(repeat):  # alternate, so a slow spell of the machine falls on both
        py = min(py, _py_loop(engine, src, ids, dst, 1))
        cc = min(cc, _kvbm._bench_copy(engine, src, ids, dst, ids, 1))
    return nbytes / py / 1e9, nbytes / cc / 1e9, nbytes


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("vllm-"):  # the vLLM connector's benches (kvbm.vllm.bench)
        from .vllm import bench as vllm_bench

        return vllm_bench.main(argv)
    p = argparse.ArgumentParser(prog="python3 -m kvbm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--host-threads", type=int, default=0)
    a = p.parse_args(argv)
    engine = TransferEngine(host_threads=a.host_threads)
    py_us, cc_us = per_call(engine, a.iterations, 4 * a.repeat)
    print(f"1-block copy (16 KiB, host -> host), copy + wait, best of {4 * a.repeat} "
          f"rounds of {a.iterations} calls:")
    print(f"  Python {py_us:8.2f} us/call   C++ {cc_us:8.2f} us/call   "
          f"Python overhead {py_us - cc_us:6.2f} us")
    py_gbs, cc_gbs, nbytes = bulk(engine, a.gib, a.repeat)
    print(f"{nbytes / (1 << 30):.2f} GiB host -> host (256 KiB blocks, {engine.host_threads} "
          f"threads), best of {a.repeat}:")
    print(f"  Python {py_gbs:8.2f} GB/s      C++ {cc_gbs:8.2f} GB/s      "
          f"ratio {py_gbs / cc_gbs:.3f}")


if __name__ == "__main__":
    main()
