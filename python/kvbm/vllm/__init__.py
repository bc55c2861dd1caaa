"""kvbm as a vLLM v1 KV connector: multi-tier KV reuse (host memory, disk) behind vLLM's paged
KV cache.

    --kv-transfer-config '{"kv_connector": "KvbmConnector",
                           "kv_connector_module_path": "kvbm.vllm",
                           "kv_role": "kv_both",
                           "kv_connector_extra_config": {"cpu_cache_gb": 16}}'

See docs/vllm.md for the design, the settings and what was tested where.
"""

from ._base import HAVE_VLLM, KVConnectorRole
from ._meta import KvbmConnectorMetadata, LoadSpec, SaveSpec
from .connector import KvbmConnector

__all__ = ["HAVE_VLLM", "KVConnectorRole", "KvbmConnector", "KvbmConnectorMetadata", "LoadSpec",
           "SaveSpec"]
