"""The transfer engine: tiers, asyncio, the GIL, errors."""

import asyncio
import threading
import time

import numpy as np
import pytest

import kvbm


def test_torch_tensor_round_trips_through_disk(engine, tmp_path):
    torch = pytest.importorskip("torch")
    num_blocks, layers = 8, 4
    src = torch.empty((num_blocks, layers, 2, 16, 1024), dtype=torch.float16)
    src.copy_(torch.randn(src.shape).to(torch.float16))
    back = torch.zeros_like(src)
    gpu_side = kvbm.Layout.from_memory(src)
    host_side = kvbm.Layout.from_memory(back)
    disk_config = gpu_side.config.replace(num_blocks=2 * num_blocks, alignment=4096)
    disk = kvbm.Layout.allocate(disk_config, kvbm.DiskAllocator(tmp_path))
    ids = list(range(num_blocks))
    out_ids = [2 * i + 1 for i in ids]  # scattered on disk
    t = engine.copy(gpu_side, ids, disk, out_ids)
    assert t.path == kvbm.TransferPath.FILE
    t.wait()
    engine.copy(disk, out_ids, host_side, ids).wait()
    assert torch.equal(src, back)


def test_copy_defaults_and_properties(engine, config):
    a = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
    b = kvbm.Layout.allocate(config, kvbm.SystemAllocator(), kind=kvbm.LayoutKind.LAYER_SEPARATE)
    a.view().numpy()[:] = np.arange(8, dtype=np.int16)[:, None, None, None, None]
    t = engine.copy(a, np.array([1, 2, 3]), b)  # numpy ids; dst_ids default to src_ids
    t.wait(timeout=30)
    assert t.ready() and t.bytes == 3 * config.block_bytes and t.path == kvbm.TransferPath.HOST
    assert (b.block(2, layer=1).numpy() == 2).all() and not b.block(4, layer=1).numpy().any()
    assert engine.path_for(a, b) == kvbm.TransferPath.HOST
    t.wait()  # again: the same outcome


def test_asyncio_awaits_several_copies(engine, config):
    src = kvbm.Layout.allocate(config.replace(num_blocks=64), kvbm.SystemAllocator())
    src.view().numpy()[:] = np.arange(64, dtype=np.int16)[:, None, None, None, None]
    dsts = [kvbm.Layout.allocate(config.replace(num_blocks=64), kvbm.SystemAllocator())
            for _ in range(4)]

    async def main():
        transfers = [engine.copy(src, list(range(64)), d) for d in dsts]
        await asyncio.gather(*transfers)
        await engine.copy(src, [0], dsts[0], [1]).wait_async(timeout=30)
        return [t.ready() for t in transfers]

    assert asyncio.run(main()) == [True] * 4
    for d in dsts[1:]:
        assert (d.view().numpy() == src.view().numpy()).all()
    assert (dsts[0].block(1).numpy() == 0).all()


def test_asyncio_raises_the_copy_error(engine, config, tmp_path):
    short = kvbm.Layout.allocate(config, kvbm.DiskAllocator(tmp_path))
    host = kvbm.Layout.allocate(config, kvbm.SystemAllocator())

    async def main():
        await engine.copy(short, [0], host, [0])
    asyncio.run(main())  # a good one, for contrast

    async def bad():
        await engine.copy(host, [0], host, [0])
    with pytest.raises(kvbm.InvalidArgumentError):
        asyncio.run(bad())


def _ticks_during(fn, period=0.002):
    """Ticks of a sleeping ticker thread while fn() runs."""
    count = [0]
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            count[0] += 1
            time.sleep(period)

    th = threading.Thread(target=tick)
    th.start()
    time.sleep(0.01)
    c0 = count[0]
    fn()
    c1 = count[0]
    stop.set()
    th.join()
    return c1 - c0


def test_gil_is_released_while_a_256_mib_copy_runs():
    """A ticker thread keeps >= 90% of its ticks while the main thread waits for 256 MiB
    copies, counted against the ticks it gets while the same copies run and the main
    thread polls ready() with sleeps (which release the GIL whatever wait() does), so
    that a loaded machine slows both windows alike. Holding the GIL in wait() would
    leave the ticker almost no ticks."""
    config = kvbm.LayoutConfig(num_blocks=256, num_layers=2, outer_dim=2, page_size=16,
                               inner_dim=4096, dtype_bytes=2)  # 1 MiB blocks
    src = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
    dst = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
    one_thread = kvbm.TransferEngine(host_threads=1)  # leaves a core to the ticker
    ids = list(range(256))
    one_thread.copy(src, ids, dst, ids).wait()  # fault the pages in

    def copies(wait, seconds=0.3):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = one_thread.copy(src, ids, dst, ids)
            if wait:
                t.wait()
            else:
                while not t.ready():
                    time.sleep(0.0005)

    ratios, total_waiting, total_polling = [], 0, 0
    for _ in range(8):  # a loaded machine may spoil a window; holding the GIL spoils all
        waiting = _ticks_during(lambda: copies(True))
        polling = _ticks_during(lambda: copies(False))
        total_waiting, total_polling = total_waiting + waiting, total_polling + polling
        ratios.append(waiting / max(polling, 1))
        if ratios[-1] >= 0.9 or total_waiting >= 0.9 * total_polling:
            break
    assert max(ratios) >= 0.9 or total_waiting >= 0.9 * total_polling, (
        f"the ticker kept {[f'{r:.0%}' for r in ratios]} of its ticks")


def test_copy_errors(engine, config, tmp_path):
    a = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
    b = kvbm.Layout.allocate(config, kvbm.SystemAllocator())
    other = kvbm.Layout.allocate(config.replace(inner_dim=32), kvbm.SystemAllocator())
    with pytest.raises(kvbm.OutOfBoundsError, match="block id 8"):
        engine.copy(a, [8], b, [0])
    with pytest.raises(kvbm.InvalidArgumentError, match="differ|same blocks|inner"):
        engine.copy(a, [0], other, [0])
    with pytest.raises(kvbm.InvalidArgumentError):
        engine.copy(a, [0, 1], b, [0])
    with pytest.raises(kvbm.InvalidArgumentError):
        engine.copy(a, [], b, [])
    with pytest.raises(kvbm.InvalidArgumentError, match="more than once"):
        engine.copy(a, [0, 1], b, [2, 2])
    with pytest.raises(ValueError, match=r"src_ids\[1\] is -1"):
        engine.copy(a, [0, -1], b)
    with pytest.raises(TypeError, match="sequence of block ids"):
        engine.copy(a, 3, b)
    with pytest.raises(TypeError, match=r"src_ids\[0\] must be an int"):
        engine.copy(a, [1.0], b)
    with pytest.raises(TypeError):
        engine.copy(a, [0], "layout")
    with pytest.raises(TypeError, match="kvbm.Agent"):
        engine.copy(a, [0], b, agent=object())
    with pytest.raises(kvbm.InvalidArgumentError):
        kvbm.TransferEngine(staging_bytes=1000)
    with pytest.raises(ValueError, match="timeout"):
        engine.copy(a, [0], b, [1]).wait(timeout=-1)
    with pytest.raises(kvbm.InvalidArgumentError):
        engine.register_host_layout(kvbm.Layout.allocate(config, kvbm.DiskAllocator(tmp_path)))


def test_threads_share_an_engine_and_a_transfer(engine, config):
    big = config.replace(num_blocks=64)
    src = kvbm.Layout.allocate(big, kvbm.SystemAllocator())
    src.view().numpy()[:] = np.arange(64, dtype=np.int16)[:, None, None, None, None]
    dsts = [kvbm.Layout.allocate(big, kvbm.SystemAllocator()) for _ in range(5)]
    errors = []

    def work(dst):
        try:
            for i in range(50):
                engine.copy(src, [i], dst, [63 - i]).wait(timeout=30)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(d,)) for d in dsts[:4]]
    shared = engine.copy(src, list(range(64)), dsts[4])  # waited for by three threads
    threads += [threading.Thread(target=shared.wait) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and shared.ready()
    for d in dsts[:4]:
        assert (d.view().numpy()[63 - np.arange(50)] == src.view().numpy()[:50]).all()
    assert (dsts[4].view().numpy() == src.view().numpy()).all()


def test_cuda_host_engine_is_forced_or_needs_a_gpu():
    forced = kvbm.TransferEngine(host_threads=1, cuda_host_engine=kvbm.CudaHostEngine.BATCH)
    options = kvbm.TransferEngineOptions(cuda_host_engine=kvbm.CudaHostEngine.KERNEL)
    assert options.cuda_host_engine == kvbm.CudaHostEngine.KERNEL and options.host_threads == 0
    if kvbm.gpu_count() == 0:
        with pytest.raises(kvbm.DeviceUnavailableError):
            forced.cuda_host_engine(0, True, 1 << 20)
    else:
        assert forced.cuda_host_engine(0, True, 1 << 20) == kvbm.CudaHostEngine.BATCH
