"""KvbmConnector: vLLM's KVConnectorBase_V1 over kvbm's block manager with an engine-owned G1.

vLLM's call order, per engine step:
  scheduler: get_num_new_matched_tokens (per waiting request, maybe many times),
             update_state_after_alloc, build_connector_meta, then after the step
             update_connector_output and request_finished (finished requests)
  worker:    bind_connector_metadata, start_load_kv, per attention layer
             wait_for_layer_load / save_kv_layer, wait_for_save, get_finished,
             get_block_ids_with_load_errors, clear_connector_metadata
The scheduler half lives in scheduler.py, the worker half in worker.py; this class routes
each call to the half of its role."""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ._base import KVConnectorBase_V1, KVConnectorRole, init_base
from ._meta import KvbmConnectorMetadata
from ._shared import Settings, forget, shared_for
from .scheduler import SchedulerSide
from .worker import WorkerSide


@dataclass
class KvbmConnectorStats:
    """A snapshot of the connector's counters (names: kvbm.vllm._shared.Stats.NAMES, plus
    pending_loads and pending_saves), in the shape of vLLM's KVConnectorStats."""

    data: Dict[str, int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not any(self.data.values())


def _engine_id(vllm_config) -> str:
    return str(getattr(vllm_config.kv_transfer_config, "engine_id", None) or "default")


class KvbmConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role, kv_cache_config=None):
        init_base(self, vllm_config, role, kv_cache_config)
        tc = vllm_config.kv_transfer_config
        settings = Settings.from_extra(getattr(tc, "kv_connector_extra_config", None))
        self._engine_id = _engine_id(vllm_config)
        self._shared = shared_for(self._engine_id, settings)
        block_size = int(vllm_config.cache_config.block_size)
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler: Optional[SchedulerSide] = SchedulerSide(self._shared, block_size)
            self._worker = None
        else:
            self._scheduler = None
            self._worker = WorkerSide(self._shared, block_size, self._engine_id)

    @property
    def shared(self):
        """The engine's shared state: block manager, ExternalG1, connector counters."""
        return self._shared

    # ---- scheduler side -----------------------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> Tuple[int, bool]:
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output) -> KvbmConnectorMetadata:
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output):
        self._scheduler.update_connector_output(connector_output)

    def request_finished(self, request, block_ids) -> Tuple[bool, Optional[dict]]:
        return self._scheduler.request_finished(request, block_ids)

    def get_kv_connector_stats(self):
        """The connector's counters (matched tokens, loads, saves, their failures, pending
        work) as KvbmConnectorStats: vLLM's KVConnectorStats shape (a `data` dict). The
        block manager's own counters go out through kvbm.metrics."""
        return KvbmConnectorStats(data=self._shared.stats.snapshot())

    # ---- worker side --------------------------------------------------------------------

    def register_kv_caches(self, kv_caches):
        self._worker.register_kv_caches(kv_caches)

    def register_kv_layout(self, layout, layer_names=None):
        """The engine's KV as a kvbm.Layout (LAYER_SEPARATE, OUTER_MAJOR) instead of tensors:
        for benchmarks with kvbm-owned Device layouts."""
        self._worker.register_layout(layout, layer_names)

    def start_load_kv(self, forward_context, **kwargs):
        self._worker.start_load_kv(self._get_connector_metadata())

    def wait_for_layer_load(self, layer_name):
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        return None  # blocks are saved whole when their request finishes (request_finished)

    def wait_for_save(self):
        self._worker.wait_for_save()

    def get_finished(self, finished_req_ids):
        return self._worker.get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self):
        return self._worker.get_block_ids_with_load_errors()

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            forget(self._engine_id)
