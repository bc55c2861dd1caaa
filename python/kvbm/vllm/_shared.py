"""What the scheduler-side and worker-side connectors of one engine share: the settings, the
block manager (made by the worker side once it has the engine's KV tensors) and the
connector's own counters.

Both sides find each other through a registry in this process, keyed by the engine id, so
this works where vLLM runs the scheduler and the worker in one process (one GPU per engine,
the uniprocess executor). Where they are apart, the scheduler side finds no manager and
matches nothing: no reuse, and no harm."""

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

GIB = 1 << 30


@dataclass
class Settings:
    """kv_connector_extra_config keys (all optional)."""

    g2_blocks: Optional[int] = None  # host tier in blocks (else cpu_cache_gb)
    cpu_cache_gb: float = 4.0
    g3_blocks: Optional[int] = None  # disk tier in blocks (else disk_cache_gb; 0: none)
    disk_cache_gb: float = 0.0
    disk_dir: Optional[str] = None
    disk_min_hits: int = 2  # hits before a block is written to disk
    load_async: bool = False  # True: loads between steps; False: layer-wise in the step
    metrics_port: Optional[int] = None  # else KVBM_METRICS_PORT; None: no exporter

    @staticmethod
    def from_extra(extra: Optional[Dict[str, Any]]) -> "Settings":
        s = Settings()
        for key, value in (extra or {}).items():
            if not hasattr(s, key):
                raise ValueError(f"kv_connector_extra_config: unknown key {key!r} "
                                 f"(known: {', '.join(sorted(vars(s)))})")
            setattr(s, key, value)
        if s.metrics_port is None and os.environ.get("KVBM_METRICS_PORT"):
            raw = os.environ["KVBM_METRICS_PORT"]
            try:
                s.metrics_port = int(raw)
            except ValueError:
                raise ValueError(f"KVBM_METRICS_PORT is {raw!r}, not a port number") from None
        if s.metrics_port is not None and not 0 <= int(s.metrics_port) <= 65535:
            raise ValueError(f"metrics_port is {s.metrics_port}, not 0..65535")
        return s

    def blocks(self, blocks: Optional[int], gib: float, block_bytes: int) -> int:
        if blocks is not None:
            return int(blocks)
        return int(float(gib) * GIB) // block_bytes


class Stats:
    """The connector's own counters (the block manager keeps the rest): read by the metrics
    exporter. Updated with the GIL held; a lock keeps a snapshot consistent."""

    NAMES = (
        "matched_tokens",  # tokens the scheduler was told it can load (per load issued)
        "load_requests", "loaded_blocks", "load_failed_blocks",
        "save_requests", "saved_blocks", "save_present_blocks", "save_dropped_blocks",
    )

    def __init__(self):
        self._lock = threading.Lock()
        self._c = {n: 0 for n in self.NAMES}
        self.pending_loads = 0
        self.pending_saves = 0

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._c[k] += v

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            out = dict(self._c)
        out["pending_loads"] = self.pending_loads
        out["pending_saves"] = self.pending_saves
        return out


@dataclass
class Shared:
    settings: Settings
    stats: Stats = field(default_factory=Stats)
    manager: Any = None  # kvbm.BlockManager, once the worker registered the KV caches
    external: Any = None  # kvbm.ExternalG1 over it
    metrics_server: Any = None


_lock = threading.Lock()
_registry: Dict[str, Shared] = {}


def shared_for(engine_id: str, settings: Settings) -> Shared:
    """The engine's shared state, made on first use (by either side)."""
    with _lock:
        s = _registry.get(engine_id)
        if s is None:
            s = _registry[engine_id] = Shared(settings)
        return s


def forget(engine_id: str) -> None:
    with _lock:
        _registry.pop(engine_id, None)
