"""GPU memory (marked gpu: skipped without a usable GPU)."""

import numpy as np
import pytest

import kvbm

pytestmark = pytest.mark.gpu

KDL_CUDA = 2


@pytest.fixture
def gpu_config():
    return kvbm.LayoutConfig(num_blocks=16, num_layers=2, outer_dim=2, page_size=16,
                             inner_dim=256, dtype_bytes=2)


def test_device_views_are_cuda_with_the_ordinal(gpu_config):
    layout = kvbm.Layout.allocate(gpu_config, kvbm.DeviceAllocator(0), dtype="float16")
    assert layout.storage_kind == kvbm.StorageKind.DEVICE
    assert layout.block(0).__dlpack_device__() == (KDL_CUDA, 0)
    assert layout.chunk(1, 1, 1).__dlpack_device__() == (KDL_CUDA, 0)
    s = kvbm.DeviceAllocator(0).allocate(1 << 20)
    assert s.__dlpack_device__() == (KDL_CUDA, 0)
    with pytest.raises(AttributeError):
        layout.block(0).__array_interface__


def test_device_pinned_device_round_trip(engine, gpu_config):
    host = kvbm.Layout.allocate(gpu_config, kvbm.SystemAllocator())
    pinned = kvbm.Layout.allocate(gpu_config, kvbm.PinnedAllocator())
    dev_a = kvbm.Layout.allocate(gpu_config, kvbm.DeviceAllocator(0),
                                 kind=kvbm.LayoutKind.LAYER_SEPARATE)
    dev_b = kvbm.Layout.allocate(gpu_config, kvbm.DeviceAllocator(0))
    rng = np.random.default_rng(1)
    want = rng.integers(-(1 << 15), 1 << 15, size=host.view().shape, dtype=np.int16)
    host.view().numpy()[:] = want
    ids = list(range(16))
    engine.copy(host, ids, dev_a, ids[::-1]).wait()
    engine.copy(dev_a, ids, pinned, ids).wait()
    pinned_view = pinned.view().numpy()
    assert (pinned_view == want[::-1]).all()
    engine.copy(pinned, ids, dev_b, ids).wait()
    host.view().numpy()[:] = 0
    engine.copy(dev_b, ids, host, ids[::-1]).wait()
    assert (host.view().numpy() == want).all()


def test_torch_cuda_tensor_layout(engine, gpu_config):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    t = torch.arange(16 * 2 * 2 * 16 * 256, dtype=torch.float16, device="cuda")
    t = t.reshape(16, 2, 2, 16, 256)
    layout = kvbm.Layout.from_memory(t)
    assert layout.storage_kind == kvbm.StorageKind.DEVICE
    host = kvbm.Layout.allocate(layout.config, kvbm.SystemAllocator(), dtype="float16")
    engine.copy(layout, list(range(16)), host).wait()
    assert torch.equal(torch.from_dlpack(host.view()), t.cpu())
    assert torch.equal(torch.from_dlpack(layout.block(3)), t[3])
