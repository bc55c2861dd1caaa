"""Layouts over caller memory, DLPack views, aliasing and lifetime."""

import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kvbm
from conftest import fnv1a


def test_numpy_write_shows_in_kvbm_checksum_and_back(engine, config):
    arr = np.zeros((8, 2, 2, 4, 64), dtype=np.float16)
    layout = kvbm.Layout.from_memory(arr)
    assert layout.config == config
    assert layout.storage_kind == kvbm.StorageKind.SYSTEM
    assert layout.regions[0] == (arr.ctypes.data, arr.nbytes)
    zero = layout.checksum([3])
    arr[3] = np.arange(2 * 2 * 4 * 64, dtype=np.float16).reshape(2, 2, 4, 64)
    # kvbm reads the bytes numpy wrote: the checksum kvbm computes is that of numpy's bytes.
    assert layout.checksum([3]) == fnv1a(arr[3].tobytes()) != zero
    # ... and numpy sees what kvbm writes: a copy into block 5 by the engine.
    src = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), dtype="float16")
    src.block(1).numpy()[:] = 7.0
    engine.copy(src, [1], layout, [5]).wait()
    assert (arr[5] == 7.0).all()
    assert (arr[4] == 0).all() and (arr[6] == 0).all()


def test_views_alias_layout_memory(config):
    layout = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), dtype="float16")
    whole = np.from_dlpack(layout.view())
    assert whole.shape == (8, 2, 2, 4, 64) and whole.dtype == np.float16
    block = layout.block(2).numpy()
    chunk = layout.chunk(2, 1, 1).numpy()
    assert block.shape == (2, 2, 4, 64) and chunk.shape == (4, 64)
    chunk[:] = 5.0
    assert (block[1, 1] == 5.0).all() and (whole[2, 1, 1] == 5.0).all()
    addr, size = layout.memory_region(2, 1, 1)
    assert chunk.ctypes.data == addr and chunk.nbytes == size == config.chunk_bytes
    assert layout.block(0).__dlpack_device__() == (1, 0)
    assert layout.checksum([2]) == fnv1a(block.tobytes())


def test_layer_separate_views(config):
    layers = [np.zeros((8, 2, 4, 64), dtype=np.float16) for _ in range(2)]
    layout = kvbm.Layout.from_memory(layers, config)
    assert layout.kind == kvbm.LayoutKind.LAYER_SEPARATE
    layout.chunk(3, 1, 0).numpy()[:] = 2.0
    assert (layers[1][3, 0] == 2.0).all() and not layers[0].any()
    assert layout.block(3, layer=1).shape == (2, 4, 64)
    assert layout.view(layer=0).shape == (8, 2, 4, 64)
    with pytest.raises(ValueError, match="pass layer="):
        layout.block(3)
    outer = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), kind=kvbm.LayoutKind.LAYER_SEPARATE,
                                 order=kvbm.LayerOrder.OUTER_MAJOR, dtype="float16")
    v = outer.view(layer=1).numpy()
    v[:, 1] = 9.0
    assert (outer.chunk(6, 1, 1).numpy() == 9.0).all() and not outer.chunk(6, 1, 0).numpy().any()


def test_view_outlives_its_layout(config):
    layout = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), dtype="float16")
    a = np.from_dlpack(layout.block(4))
    b = layout.chunk(4, 0, 0).numpy()
    b[:] = 1.5
    del layout
    gc.collect()
    assert (a[0, 0] == 1.5).all()  # the memory is still there
    b[:] = 2.5
    assert (a[0, 0] == 2.5).all()


def test_layout_keeps_its_source_alive():
    arr = np.ones((4, 1, 1, 2, 512), dtype=np.uint8)
    layout = kvbm.Layout.from_memory(arr)
    del arr
    gc.collect()
    assert layout.block(3).numpy().sum() == 1024


def test_torch_tensor_views():
    torch = pytest.importorskip("torch")
    t = torch.zeros((4, 2, 2, 16, 128), dtype=torch.bfloat16)
    layout = kvbm.Layout.from_memory(t)
    assert layout.dtype == "bfloat16"
    v = torch.from_dlpack(layout.block(1))
    v.fill_(3.0)
    assert bool((t[1] == 3.0).all()) and not bool(t[0].any())


def test_storage_from_memory_and_dlpack():
    arr = np.arange(4096, dtype=np.uint8)
    s = kvbm.Storage.from_memory(arr)
    assert s.kind == kvbm.StorageKind.SYSTEM and s.size == 4096 and s.addr == arr.ctypes.data
    assert (np.from_dlpack(s) == arr).all()
    own = kvbm.SystemAllocator().allocate(1 << 16)
    own.view().numpy()[:8] = 42
    assert bytes(np.from_dlpack(own)[:8]) == b"*" * 8
    assert own.desc_list() == kvbm.DescList(kvbm.MemType.DRAM, [(own.addr, 1 << 16, 0)])


def test_disk_storage_and_layout(tmp_path, config):
    s = kvbm.DiskAllocator(tmp_path).allocate(1 << 20)
    assert s.kind == kvbm.StorageKind.DISK and s.path.startswith(str(tmp_path))
    disk = kvbm.Layout.allocate(config, kvbm.DiskAllocator(tmp_path))
    assert disk.storage_kind == kvbm.StorageKind.DISK
    with pytest.raises(ValueError, match="not in this process's address space"):
        disk.block(0)
    with pytest.raises(ValueError):
        np.from_dlpack(s)


def test_address_tuple(config):
    arr = np.zeros(config.block_bytes * config.num_blocks, dtype=np.uint8)
    layout = kvbm.Layout.from_memory((arr.ctypes.data, arr.nbytes, "cpu"), config)
    view = layout.block(7)
    assert view.dtype == "int16"  # the default for dtype_bytes=2
    view.numpy()[:] = 0x0101
    assert arr[7 * config.block_bytes:].all() and not arr[:7 * config.block_bytes].any()


def test_memory_errors(config):
    arr = np.zeros((8, 2, 2, 4, 64), dtype=np.float16)
    with pytest.raises(ValueError, match="not contiguous"):
        kvbm.Layout.from_memory(arr[:, :, :, :, ::2])
    with pytest.raises(ValueError, match="not contiguous"):
        kvbm.Layout.from_memory(arr.transpose(1, 0, 2, 3, 4))
    with pytest.raises(ValueError, match="config is required"):
        kvbm.Layout.from_memory(np.zeros(100, dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype_bytes is 4"):
        kvbm.Layout.from_memory(arr, config.replace(dtype_bytes=4))
    with pytest.raises(kvbm.OutOfBoundsError, match="needs 16384") as e:
        kvbm.Layout.from_memory(arr[:4], config)  # half the blocks' bytes
    assert e.value.code == kvbm.ErrorCode.OUT_OF_BOUNDS
    with pytest.raises(TypeError, match="__dlpack__"):
        kvbm.Layout.from_memory("not memory", config)
    with pytest.raises(ValueError, match="device must be"):
        kvbm.Layout.from_memory((arr.ctypes.data, arr.nbytes, "tpu"), config)
    with pytest.raises(TypeError, match="address must be an int"):
        kvbm.Storage.from_memory(("0x1000", 4096, "cpu"))
    with pytest.raises(TypeError, match="device must be"):
        kvbm.Storage.from_memory((arr.ctypes.data, 4096, (1, "x")))
    with pytest.raises(TypeError, match="num_blocks must be an int >= 0"):
        config.replace(num_blocks=-1)
    with pytest.raises(TypeError, match="has no field"):
        config.replace(blocks=1)
    with pytest.raises(ValueError, match="size must be > 0"):
        kvbm.Storage.from_memory((arr.ctypes.data, 0, "cpu"))
    with pytest.raises(kvbm.InvalidArgumentError, match="inner_dim") as e:
        kvbm.LayoutConfig(num_blocks=1, num_layers=1, page_size=1, inner_dim=0)
    assert isinstance(e.value, ValueError) and e.value.code == kvbm.ErrorCode.INVALID_ARGUMENT
    with pytest.raises(kvbm.InvalidArgumentError):
        kvbm.SystemAllocator().allocate(0)
    with pytest.raises(TypeError):
        kvbm.Layout.allocate(config, "system")
    with pytest.raises(ValueError, match="unknown dtype"):
        kvbm.Layout.allocate(config, kvbm.SystemAllocator(), dtype="float17")
    layout = kvbm.Layout.from_memory(arr)
    with pytest.raises(kvbm.OutOfBoundsError, match="block 8 out of range"):
        layout.block(8)
    with pytest.raises(kvbm.OutOfBoundsError, match="layer 2 out of range"):
        layout.chunk(0, 2, 0)
    with pytest.raises(ValueError, match="block must be >= 0"):
        layout.block(-1)
    with pytest.raises(ValueError):
        layout.block(0).__dlpack__(stream=1)
    with pytest.raises(BufferError, match="copy=True"):
        layout.block(0).__dlpack__(copy=True)
    with pytest.raises(BufferError, match="not the view's device"):
        layout.block(0).__dlpack__(dl_device=(2, 0))
    # Newer consumers ask for a versioned capsule and take the classic one.
    assert layout.block(0).__dlpack__(max_version=(1, 0), dl_device=(1, 0), copy=False)


def test_pinned_and_device_need_a_gpu(config):
    if kvbm.gpu_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(kvbm.DeviceUnavailableError) as e:
        kvbm.PinnedAllocator().allocate(4096)
    assert e.value.code == kvbm.ErrorCode.DEVICE_UNAVAILABLE and e.value.message
    with pytest.raises(kvbm.DeviceUnavailableError):
        kvbm.Layout.allocate(config, kvbm.DeviceAllocator(0))
    with pytest.raises(kvbm.DeviceUnavailableError):
        kvbm.Storage.from_memory(np.zeros(4096, dtype=np.uint8), pin=True)


def test_agent_dropped_before_its_registrations_exits_cleanly():
    script = textwrap.dedent("""
        import gc, numpy as np, kvbm
        agent = kvbm.Agent("short-lived")
        storage = kvbm.SystemAllocator().allocate(1 << 20)
        config = kvbm.LayoutConfig(num_blocks=4, num_layers=2, page_size=4, inner_dim=64)
        layout = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
        arr = np.zeros(1 << 16, dtype=np.uint8)
        over = kvbm.Storage.from_memory(arr)
        raw = np.zeros(4096, dtype=np.uint8)
        reg = agent.register_memory(kvbm.DescList(kvbm.MemType.DRAM, [(raw.ctypes.data, 4096, 0)]))
        for obj in (storage, layout):
            agent.register(obj)
        agent.register(over)
        transfer = kvbm.TransferEngine().copy(layout, [0], layout, [1])
        del agent
        gc.collect()
        print(storage.registered_agent, flush=True)
        del storage
        gc.collect()
        # layout, over, reg, transfer and the agent they keep go at interpreter exit
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "short-lived\n"
    assert r.stderr == ""


def test_every_error_code_has_its_class():
    classes = [getattr(kvbm, n) for n in kvbm._errors.__all__ if n != "Error"]
    assert sorted(c.code.name for c in classes) == sorted(kvbm.ErrorCode.__members__)
    assert all(issubclass(c, kvbm.Error) for c in classes)
    e = kvbm.NotFoundError("no such agent 'x'")
    assert isinstance(e, LookupError) and e.message == str(e) == "no such agent 'x'"
