"""Shared fixtures of the kvbm Python tests (run by ctest as the test `python`)."""

import pytest

import kvbm


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a usable GPU (skips cleanly without one)")


def pytest_collection_modifyitems(config, items):
    if kvbm.gpu_count() > 0:
        return
    try:
        kvbm.cuda_device_count()
        reason = "no GPU"
    except kvbm.DeviceUnavailableError as e:
        reason = f"no GPU: {e.message}"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def engine():
    return kvbm.TransferEngine(host_threads=2)


@pytest.fixture
def config():
    # 2 layers x K/V x 4 tokens x 64 x 2 bytes: 512-byte chunks, 2 KiB blocks.
    return kvbm.LayoutConfig(num_blocks=8, num_layers=2, outer_dim=2, page_size=4, inner_dim=64,
                             dtype_bytes=2)


def fnv1a(data: bytes) -> int:
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h
