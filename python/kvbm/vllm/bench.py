"""Benchmarks of kvbm.vllm's KvbmConnector, driven in vLLM's call order without vLLM.

    /usr/bin/python3 -m kvbm.bench vllm-scheduler [--blocks 1000] [--calls 2000]
    /usr/bin/python3 -m kvbm.bench vllm-load [--blocks 1000] [--repeat 5]

vllm-scheduler: the cost of get_num_new_matched_tokens for a prompt of `blocks` full blocks
(plus a tail) whose blocks are all on G2 (the longest walk), as p50/p99 over `calls` calls:
  repeat  the same request again (vLLM asks again while a request waits): the request's
          hashes are cached, only the pool walk is paid;
  first   a new request each time: its tokens converted and hashed (C++), then the walk.
Block bytes do not enter it, so the tiers are small host layouts.

vllm-load (needs a GPU; prints a skip line and exits 0 without one): Llama-3-8B shapes (32
layers, K/V, 16 tokens, 8 heads x 128, fp16). The engine's KV is a kvbm-owned Device layout
(LAYER_SEPARATE, OUTER_MAJOR: vLLM's per-layer tensors); `blocks` blocks saved to G2
(pinned), then loaded back through the connector (start_load_kv, wait_for_layer_load(0),
wait_for_save): the load's GB/s against the pinned -> GPU ceiling measured in the same run
(the same bytes as one contiguous copy through kvbm's engine), and the time until layer 0
was usable against the whole load's (the target: within 2/32)."""

import argparse
import itertools
import statistics
import time
from types import SimpleNamespace

from .._kvbm import (DeviceAllocator, LayerOrder, Layout, LayoutConfig, LayoutKind,
                     PinnedAllocator, SystemAllocator, TransferEngine)
from . import KvbmConnector, KVConnectorRole

_ids = itertools.count()


class _Request:
    def __init__(self, tokens):
        self.request_id = f"bench-{next(_ids)}"
        self.all_token_ids = tokens
        self.prompt_token_ids = tokens
        self.num_computed_tokens = 0
        self.cache_salt = None
        self.lora_request = None

    @property
    def num_tokens(self):
        return len(self.all_token_ids)


class _Blocks:
    def __init__(self, ids):
        self._ids = ids

    def get_block_ids(self):
        return (self._ids,)


def _connectors(layout, **extra):
    engine_id = f"bench-{next(_ids)}"
    tc = SimpleNamespace(engine_id=engine_id, kv_connector_extra_config=extra)
    cfg = SimpleNamespace(kv_transfer_config=tc,
                          cache_config=SimpleNamespace(block_size=layout.config.page_size))
    sched = KvbmConnector(cfg, KVConnectorRole.SCHEDULER)
    worker = KvbmConnector(cfg, KVConnectorRole.WORKER)
    worker.register_kv_layout(layout)
    return sched, worker


def _step(sched, worker, finished=()):
    meta = sched.build_connector_meta(None)
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    worker.wait_for_save()
    out = worker.get_finished(set(finished))
    worker.clear_connector_metadata()
    return out


def _save(sched, worker, tokens, blocks):
    """Runs a request over engine blocks 0..blocks-1 and saves them (waits until done)."""
    req = _Request(tokens)
    req.num_computed_tokens = len(tokens)
    assert sched.request_finished(req, list(range(blocks)))[0]
    sent, _ = _step(sched, worker, {req.request_id})
    while not sent or req.request_id not in sent:
        worker._worker.drain()
        sent, _ = _step(sched, worker)


def _percentiles(samples_us):
    s = sorted(samples_us)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def scheduler_cost(blocks, calls):
    bs = 16
    config = LayoutConfig(num_blocks=blocks + 8, num_layers=4, outer_dim=2, page_size=bs,
                          inner_dim=16, dtype_bytes=2)
    kv = Layout.allocate(config, SystemAllocator(), kind=LayoutKind.LAYER_SEPARATE,
                         order=LayerOrder.OUTER_MAJOR)
    sched, worker = _connectors(kv, g2_blocks=blocks + 8, g3_blocks=0)
    tokens = [(i * 7919 + 13) % 128000 for i in range(blocks * bs + 9)]
    _save(sched, worker, tokens[:blocks * bs], blocks)
    want = blocks * bs
    req = _Request(tokens)
    assert sched.get_num_new_matched_tokens(req, 0) == (want, False)
    repeat = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        sched.get_num_new_matched_tokens(req, 0)
        repeat.append((time.perf_counter_ns() - t0) / 1e3)
    first = []
    for _ in range(calls):
        r = _Request(tokens)
        t0 = time.perf_counter_ns()
        n, _ = sched.get_num_new_matched_tokens(r, 0)
        first.append((time.perf_counter_ns() - t0) / 1e3)
        assert n == want
        sched._scheduler._seqs.pop(r.request_id)
    worker.shutdown()
    return _percentiles(repeat), _percentiles(first), len(repeat), len(first)


def gpu_load(blocks, repeat, host=False):
    """host=True runs the same flow with host memory standing for the GPU (a check of the
    bench itself where there is no GPU; its figures mean nothing)."""
    from .. import gpu_count

    if gpu_count() == 0 and not host:
        print("vllm-load: skipped (no usable GPU)")
        return None
    gpu_alloc = SystemAllocator() if host else DeviceAllocator(0)
    pinned_alloc = SystemAllocator() if host else PinnedAllocator()
    config = LayoutConfig(num_blocks=blocks, num_layers=32, outer_dim=2, page_size=16,
                          inner_dim=8 * 128, dtype_bytes=2)
    kv = Layout.allocate(config, gpu_alloc, kind=LayoutKind.LAYER_SEPARATE,
                         order=LayerOrder.OUTER_MAJOR)
    sched, worker = _connectors(kv, g2_blocks=blocks, g3_blocks=0)
    engine = TransferEngine()
    tokens = [(i * 7919 + 13) % 128000 for i in range(blocks * 16 + 1)]
    _save(sched, worker, tokens[:blocks * 16], blocks)
    nbytes = blocks * config.block_bytes
    # The ceiling: the same bytes, pinned -> GPU, as one contiguous copy.
    pinned = Layout.allocate(config, pinned_alloc)
    dev = Layout.allocate(config, gpu_alloc)
    ids = list(range(blocks))
    engine.copy(pinned, ids, dev, ids).wait()
    ceiling = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        engine.copy(pinned, ids, dev, ids).wait()
        ceiling = min(ceiling, time.perf_counter() - t0)
    whole, layer0 = [], []
    for _ in range(repeat + 1):
        req = _Request(tokens)
        n, _ = sched.get_num_new_matched_tokens(req, 0)
        assert n == blocks * 16, n
        sched.update_state_after_alloc(req, _Blocks(ids), n)
        meta = sched.build_connector_meta(None)
        worker.bind_connector_metadata(meta)
        t0 = time.perf_counter()
        worker.start_load_kv(None)
        worker.wait_for_layer_load(0)
        t1 = time.perf_counter()
        worker.wait_for_save()
        t2 = time.perf_counter()
        worker.clear_connector_metadata()
        assert not worker.get_block_ids_with_load_errors()
        sched._scheduler._seqs.pop(req.request_id)
        whole.append(t2 - t0)
        layer0.append(t1 - t0)
    whole, layer0 = whole[1:], layer0[1:]  # the first is a warm-up
    best = min(range(len(whole)), key=lambda i: whole[i])
    worker.shutdown()
    return dict(bytes=nbytes, ceiling_s=ceiling, load_s=whole[best], layer0_s=layer0[best],
                load_median_s=statistics.median(whole),
                layer0_median_s=statistics.median(layer0))


def main(argv):
    p = argparse.ArgumentParser(prog="python3 -m kvbm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["vllm-scheduler", "vllm-load"])
    p.add_argument("--blocks", type=int, default=1000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--host", action="store_true",
                   help="vllm-load with host memory for the GPU: checks the bench, not the GPU")
    a = p.parse_args(argv)
    if a.what == "vllm-scheduler":
        (r50, r99), (f50, f99), nr, nf = scheduler_cost(a.blocks, a.calls)
        print(f"get_num_new_matched_tokens, {a.blocks}-block prompt, all on G2:")
        print(f"  repeat (hashes cached)  p50 {r50:8.1f} us   p99 {r99:8.1f} us   ({nr} calls)")
        print(f"  first (tokens hashed)   p50 {f50:8.1f} us   p99 {f99:8.1f} us   ({nf} calls)")
        return
    r = gpu_load(a.blocks, a.repeat, a.host)
    if r is None:
        return
    gb = r["bytes"] / 1e9
    print(f"vllm-load: {a.blocks} blocks of Llama-3-8B shape ({r['bytes'] / 2**30:.2f} GiB), "
          f"G2 (pinned) -> engine KV (GPU), best of {a.repeat}:")
    print(f"  ceiling (one contiguous pinned -> GPU copy) {gb / r['ceiling_s']:7.2f} GB/s")
    print(f"  load through the connector               {gb / r['load_s']:7.2f} GB/s   "
          f"ratio {r['ceiling_s'] / r['load_s']:.3f} (target >= 0.8)")
    print(f"  wait_for_layer_load(0) after {r['layer0_s'] * 1e3:.2f} ms of {r['load_s'] * 1e3:.2f}"
          f" ms: {r['layer0_s'] / r['load_s'] * 32:.2f}/32 of the load (target <= 2/32); "
          f"medians {r['layer0_median_s'] * 1e3:.2f} / {r['load_median_s'] * 1e3:.2f} ms")
