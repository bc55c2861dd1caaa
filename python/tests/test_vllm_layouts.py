"""kvbm.vllm.KvbmConnector over kvbm-owned layouts (register_kv_layout, what the GPU bench
uses): on GPU memory (marked gpu: skipped without one) and on host memory (everywhere);
and its settings' errors. No torch needed."""

from types import SimpleNamespace

import numpy as np
import pytest

import kvbm
from kvbm.vllm import KvbmConnector, KVConnectorRole
from kvbm.vllm.bench import _Blocks, _connectors, _Request, _save


def vllm_config(engine_id, **extra):
    tc = SimpleNamespace(engine_id=engine_id, kv_connector_extra_config=extra)
    return SimpleNamespace(kv_transfer_config=tc, cache_config=SimpleNamespace(block_size=16))

CONFIG = dict(num_blocks=16, num_layers=4, outer_dim=2, page_size=16, inner_dim=64, dtype_bytes=2)


@pytest.mark.parametrize("memory", ["host", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_layer_wise_load_into_a_kvbm_owned_layout(memory):
    config = kvbm.LayoutConfig(**CONFIG)
    alloc = kvbm.SystemAllocator() if memory == "host" else kvbm.DeviceAllocator(0)
    kv = kvbm.Layout.allocate(config, alloc, kind=kvbm.LayoutKind.LAYER_SEPARATE,
                              order=kvbm.LayerOrder.OUTER_MAJOR)
    host = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), kind=kvbm.LayoutKind.LAYER_SEPARATE,
                                order=kvbm.LayerOrder.OUTER_MAJOR, dtype="uint8")
    rng = np.random.default_rng(5)
    for layer in range(config.num_layers):
        for b in range(8):
            host.block(b, layer=layer).numpy().reshape(-1)[:] = rng.integers(
                0, 256, 2 * 16 * 64 * 2, dtype=np.uint8)
    engine = kvbm.TransferEngine(host_threads=2)
    ids = list(range(8))
    engine.copy(host, ids, kv, ids).wait()  # the "engine" computed blocks 0..7
    sched, worker = _connectors(kv, g2_blocks=16, g3_blocks=0)
    try:
        tokens = list(range(1000, 1000 + 8 * 16 + 3))
        _save(sched, worker, tokens[:8 * 16], 8)
        req = _Request(tokens)
        assert sched.get_num_new_matched_tokens(req, 0) == (8 * 16, False)
        dst = list(range(8, 16))
        sched.update_state_after_alloc(req, _Blocks(dst), 8 * 16)
        worker.bind_connector_metadata(sched.build_connector_meta(None))
        worker.start_load_kv(None)
        for layer in range(config.num_layers):
            worker.wait_for_layer_load(layer)
        worker.wait_for_save()
        worker.clear_connector_metadata()
        assert worker.get_block_ids_with_load_errors() == set()
        engine.copy(kv, dst, host, dst).wait()
        for b in range(8):
            assert host.checksum([b]) == host.checksum([8 + b]), f"block {b}"
        c = worker.shared.manager.counters()
        assert c["g1_to_g2"]["blocks"] == 8 and c["g2_to_g1"]["blocks"] == 8
    finally:
        worker.shutdown()


def test_settings_refuse_unknown_keys_and_bad_ports(monkeypatch):
    with pytest.raises(ValueError, match="unknown key 'cpu_cache_gib'"):
        KvbmConnector(vllm_config("settings-1", cpu_cache_gib=1), KVConnectorRole.SCHEDULER)
    monkeypatch.setenv("KVBM_METRICS_PORT", "metrics")
    with pytest.raises(ValueError, match="KVBM_METRICS_PORT is 'metrics'"):
        KvbmConnector(vllm_config("settings-2"), KVConnectorRole.SCHEDULER)
    with pytest.raises(ValueError, match="metrics_port is 70000"):
        KvbmConnector(vllm_config("settings-3", metrics_port=70000), KVConnectorRole.SCHEDULER)
    monkeypatch.delenv("KVBM_METRICS_PORT")
    s = KvbmConnector(vllm_config("settings-4"), KVConnectorRole.SCHEDULER)
    assert s.shared.settings.metrics_port is None  # off by default
    assert s.get_num_new_matched_tokens(_Request(list(range(40))), 0) == (0, False)  # no worker


def test_register_kv_caches_refuses_other_shapes():
    torch = pytest.importorskip("torch")
    w = KvbmConnector(vllm_config("shapes"), KVConnectorRole.WORKER)
    with pytest.raises(ValueError, match=r"shaped \(4, 16, 2, 8\)"):
        w.register_kv_caches({"l0": torch.zeros(4, 16, 2, 8)})
    with pytest.raises(ValueError, match="'l1' differs"):
        w.register_kv_caches({"l0": torch.zeros(2, 4, 16, 2, 8), "l1": torch.zeros(2, 5, 16, 2, 8)})
    t = torch.zeros(2, 4, 16, 8, 2).transpose(3, 4)
    with pytest.raises(ValueError, match="not contiguous"):
        w.register_kv_caches({"l0": t})
    with pytest.raises(ValueError, match="hold 8 tokens, vLLM's 16"):
        w.register_kv_caches({"l0": torch.zeros(2, 4, 8, 2, 8)})
