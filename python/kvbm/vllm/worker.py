"""The worker half of KvbmConnector: builds the block manager over the engine's paged KV
tensors (zero-copy, as G1), runs the loads and saves the scheduler half planned, and
reports them done.

Loads: one ExternalLoad per request, issued in start_load_kv as one engine request per layer
and source tier, in layer order. Layer-wise (load_async false): wait_for_layer_load(layer)
waits for that layer of this step's loads only; wait_for_save finishes them and collects the
engine block ids whose bytes did not arrive. Asynchronous (load_async true): get_finished
reports a request once its load finished, failed blocks or not (they go to
get_block_ids_with_load_errors in that same call).
Saves: one ExternalSave per finished request, reported by get_finished once done and once
vLLM has told this worker the request finished."""

from typing import Dict, Iterable, List, Optional, Set, Tuple

from .._errors import Error as KvbmError
from .._kvbm import (BlockManager, BlockManagerConfig, DiskAllocator, ExternalG1, LayerOrder,
                     Layout, LayoutConfig, LayoutKind, OffloadOptions, PinnedAllocator,
                     StorageKind, SystemAllocator)
from ._shared import Shared


def _layout_over_tensors(kv_caches) -> Tuple[Layout, List[str]]:
    """A LAYER_SEPARATE, OUTER_MAJOR layout over vLLM's per-layer tensors shaped
    [2, num_blocks, block_size, num_kv_heads, head_size] (zero-copy)."""
    names = list(kv_caches)
    if not names:
        raise ValueError("register_kv_caches: no KV cache tensors")
    first = kv_caches[names[0]]
    shape = tuple(first.shape)
    if len(shape) != 5 or shape[0] != 2:
        raise ValueError(f"KV cache {names[0]!r} is shaped {shape}; kvbm takes "
                         "[2, num_blocks, block_size, num_kv_heads, head_size]")
    for n in names:
        t = kv_caches[n]
        if tuple(t.shape) != shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"KV cache {n!r} differs from {names[0]!r} (shape, dtype, device)")
        if not t.is_contiguous():
            raise ValueError(f"KV cache {n!r} is not contiguous (strides {t.stride()}); kvbm "
                             "takes the NHD layout of vLLM's default attention backend")
    _, blocks, page, heads, head = shape
    config = LayoutConfig(num_blocks=blocks, num_layers=len(names), outer_dim=2, page_size=page,
                          inner_dim=heads * head, dtype_bytes=first.element_size())
    layout = Layout.from_memory([kv_caches[n] for n in names], config,
                                kind=LayoutKind.LAYER_SEPARATE, order=LayerOrder.OUTER_MAJOR)
    return layout, names


class WorkerSide:
    def __init__(self, shared: Shared, block_size: int, engine_id: str):
        self._shared = shared
        self._bs = block_size
        self._engine_id = engine_id
        self._layers: Dict[str, int] = {}
        self._step_loads: List[Tuple[str, object]] = []  # layer-wise loads of this step
        self._async_loads: Dict[str, object] = {}
        self._saves: Dict[str, object] = {}
        self._finished_seen: Set[str] = set()
        self._load_errors: Set[int] = set()

    # ---- setup --------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches) -> None:
        layout, names = _layout_over_tensors(kv_caches)
        self.register_layout(layout, names)

    def register_layout(self, layout: Layout, layer_names: Optional[Iterable[str]] = None):
        cfg = layout.config
        if cfg.page_size != self._bs:
            raise ValueError(f"the KV layout's blocks hold {cfg.page_size} tokens, vLLM's "
                             f"{self._bs}")
        names = list(layer_names) if layer_names is not None else [
            str(i) for i in range(cfg.num_layers)]
        self._layers = {n: i for i, n in enumerate(names)}
        s = self._shared.settings
        block = cfg.replace(num_blocks=1)
        gpu = layout.storage_kind == StorageKind.DEVICE
        config = BlockManagerConfig(
            block, kind=LayoutKind.LAYER_SEPARATE, use_gpu=gpu,
            device=layout.device_id if gpu else 0,
            g2_blocks=s.blocks(s.g2_blocks, s.cpu_cache_gb, block.block_bytes),
            g3_blocks=s.blocks(s.g3_blocks, s.disk_cache_gb, block.block_bytes),
            disk_dir=s.disk_dir, offload=OffloadOptions(disk_min_hits=int(s.disk_min_hits)))
        config.apply_env_overrides()  # KVBM_CPU_CACHE_GB, KVBM_DISK_CACHE_GB win where set
        # G2 and G3 in the engine's order (outer-major), so that runs of consecutive blocks
        # on both sides copy as one chunk per layer and K/V.
        tiers = {}
        for name, n, alloc in (
                ("g2", config.g2_blocks, PinnedAllocator() if gpu else SystemAllocator()),
                ("g3", config.g3_blocks, DiskAllocator(s.disk_dir))):
            if n > 0:
                tiers[name] = Layout.allocate(block.replace(num_blocks=n), alloc,
                                              kind=LayoutKind.LAYER_SEPARATE,
                                              order=LayerOrder.OUTER_MAJOR)
        self._shared.manager = BlockManager(config, g1=layout, **tiers)
        self._shared.external = ExternalG1(self._shared.manager)
        if s.metrics_port is not None and self._shared.metrics_server is None:
            from .. import metrics

            self._shared.metrics_server = metrics.serve(
                self._shared.manager, int(s.metrics_port), self._shared.stats.snapshot)

    # ---- per step -----------------------------------------------------------------------

    def start_load_kv(self, meta) -> None:
        x = self._shared.external
        if x is None:
            return
        stats = self._shared.stats
        for spec in meta.loads:
            try:
                op = x.load(spec.hashes, spec.block_ids)
            except KvbmError:  # argument errors (not expected): nothing loads
                op = None
                self._load_errors.update(spec.block_ids)
                stats.add(load_failed_blocks=len(spec.block_ids))
            stats.add(load_requests=1)
            if meta.load_async:
                self._async_loads[spec.request_id] = op
            elif op is not None:
                self._step_loads.append((spec.request_id, op))
        # Saves after loads: a load's match holds its blocks before a save makes room.
        for spec in meta.saves:
            self._saves[spec.request_id] = x.save(spec.block_ids, spec.sequence)
            stats.add(save_requests=1)
        stats.pending_saves = len(self._saves)
        stats.pending_loads = len(self._async_loads) + len(self._step_loads)

    def wait_for_layer_load(self, layer) -> None:
        index = layer if isinstance(layer, int) else self._layers.get(layer)
        if index is None:
            return  # a layer kvbm does not hold
        for _, op in self._step_loads:
            try:
                op.wait_layer(index)
            except KvbmError:
                pass  # the load's finish() names the blocks

    def _finish_load(self, op) -> None:
        r = op.finish()
        failed = r["failed_ids"]
        self._load_errors.update(failed)
        self._shared.stats.add(loaded_blocks=r["loaded"], load_failed_blocks=len(failed))

    def wait_for_save(self) -> None:
        for _, op in self._step_loads:
            self._finish_load(op)
        self._step_loads = []
        self._shared.stats.pending_loads = len(self._async_loads)

    def get_finished(self, finished_req_ids) -> Tuple[Optional[set], Optional[set]]:
        self._finished_seen.update(finished_req_ids or ())
        sending, recving = set(), set()
        stats = self._shared.stats
        for rid in list(self._async_loads):
            op = self._async_loads[rid]
            if op is not None and not op.ready():
                continue
            if op is not None:
                self._finish_load(op)
            del self._async_loads[rid]
            recving.add(rid)
        for rid in [r for r in self._saves if r in self._finished_seen]:
            op = self._saves[rid]
            if not op.ready() or rid in self._async_loads:  # its load still writes its blocks
                continue
            r = op.finish()
            stats.add(saved_blocks=r["saved"], save_present_blocks=r["present"],
                      save_dropped_blocks=r["dropped"])
            del self._saves[rid]
            self._finished_seen.discard(rid)
            sending.add(rid)
        stats.pending_saves = len(self._saves)
        stats.pending_loads = len(self._async_loads) + len(self._step_loads)
        return (sending or None), (recving or None)

    def get_block_ids_with_load_errors(self) -> Set[int]:
        out, self._load_errors = self._load_errors, set()
        return out

    def drain(self) -> None:
        """Waits until every pending load and save finished (their results are kept for
        get_finished to report): for harnesses that step deterministically."""
        for op in list(self._async_loads.values()) + list(self._saves.values()):
            if op is not None:
                op.finish()

    def shutdown(self) -> None:
        for _, op in self._step_loads:
            op.finish()
        for op in list(self._async_loads.values()) + list(self._saves.values()):
            if op is not None:
                op.finish()
        self._step_loads, self._async_loads, self._saves = [], {}, {}
        if self._shared.metrics_server is not None:
            self._shared.metrics_server.shutdown()
            self._shared.metrics_server = None
