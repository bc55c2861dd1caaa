"""vLLM's connector base types when vllm imports; otherwise small stand-ins with the same
names and the calls the connector uses, so kvbm.vllm works (and is tested) without vLLM."""

import enum

try:  # pragma: no cover - vLLM is not installed where kvbm is tested
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # type: ignore
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
    )

    HAVE_VLLM = True
except Exception:  # ImportError, or a vLLM whose import fails on this machine
    HAVE_VLLM = False

    class KVConnectorRole(enum.Enum):  # type: ignore[no-redef]
        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata:  # type: ignore[no-redef]
        """What the scheduler-side connector hands the worker-side one each step."""

    class KVConnectorBase_V1:  # type: ignore[no-redef]
        """The part of vLLM's base class that KvbmConnector relies on."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            if getattr(vllm_config, "kv_transfer_config", None) is None:
                raise ValueError("kv_transfer_config must be set for a KV connector")
            self._connector_metadata = None
            self._vllm_config = vllm_config
            self._kv_transfer_config = vllm_config.kv_transfer_config
            self._kv_cache_config = kv_cache_config
            self._role = role

        @property
        def role(self):
            return self._role

        def bind_connector_metadata(self, connector_metadata):
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self):
            self._connector_metadata = None

        def has_connector_metadata(self):
            return self._connector_metadata is not None

        def _get_connector_metadata(self):
            assert self._connector_metadata is not None
            return self._connector_metadata


def init_base(obj, vllm_config, role, kv_cache_config):
    """Calls the base __init__ of either vLLM generation: (config, role, kv_cache_config) or the
    older (config, role)."""
    try:
        KVConnectorBase_V1.__init__(obj, vllm_config, role, kv_cache_config)
    except TypeError:
        KVConnectorBase_V1.__init__(obj, vllm_config, role)
