"""The agent: descriptors, metadata, publish/fetch, requests, notifications, two processes."""

import asyncio
import multiprocessing
import os
import pickle
import socket
import subprocess
import time

import numpy as np
import pytest

import kvbm
from _peers import pattern, writer


def test_remote_descriptor_bytes_json_pickle():
    d = kvbm.RemoteDescriptor(4096, 8192, kvbm.MemType.DRAM, 0, "prefill", b"block 7")
    assert kvbm.RemoteDescriptor.from_bytes(d.to_bytes()) == d
    assert kvbm.RemoteDescriptor.from_json(d.to_json()) == d
    assert pickle.loads(pickle.dumps(d)) == d
    assert d.notification == b"block 7" and d.agent == "prefill" and d.size == 8192
    s = d.slice(1024, 1024)
    assert (s.addr, s.size, s.notification) == (5120, 1024, b"block 7")
    d.notification = None
    assert d.notification is None and d != kvbm.RemoteDescriptor.from_bytes(s.to_bytes())
    assert d.desc_list() == kvbm.DescList(kvbm.MemType.DRAM, [(4096, 8192, 0)])


def test_remote_descriptor_errors():
    with pytest.raises(kvbm.InvalidArgumentError):
        kvbm.RemoteDescriptor.from_bytes(b"\xff\x00garbage")
    with pytest.raises(kvbm.InvalidArgumentError):
        kvbm.RemoteDescriptor.from_json("{\"v\": 1}")
    with pytest.raises(TypeError):
        kvbm.RemoteDescriptor.from_bytes(42)
    with pytest.raises(kvbm.OutOfBoundsError, match="4096"):
        kvbm.RemoteDescriptor(0, 4096, kvbm.MemType.DRAM, 0, "a").slice(4000, 200)
    with pytest.raises(ValueError, match="agent"):
        kvbm.RemoteDescriptor(0, 4096, kvbm.MemType.DRAM, 0, "")


def test_in_process_metadata_read_write_and_notifications():
    a, b = kvbm.Agent("a"), kvbm.Agent("b")
    assert "UCX" in a.backends and a.name == "a"
    src = kvbm.SystemAllocator().allocate(1 << 16)
    dst = kvbm.SystemAllocator().allocate(1 << 16)
    src.view().numpy()[:] = pattern(1 << 16, 3)
    a.register(src)
    b.register(dst)
    with pytest.raises(kvbm.AlreadyRegisteredError):
        a.register(src)
    assert b.load_metadata(a.metadata()) == "a" and b.has_remote("a")
    # b READs a's memory; a hears about it.
    b.read(dst, src.remote_descriptor(b"read done")).wait(timeout=20)
    assert (dst.view().numpy() == pattern(1 << 16, 3)).all()
    n = a.wait_notification(timeout=20)
    assert (n.agent, n.message) == ("b", b"read done")
    # A request prepared once and posted twice, with a DescList remote.
    req = b.request(kvbm.Op.READ, dst, src.desc_list(), "a", post=False)
    assert req.state == kvbm.XferState.IDLE
    req.post()
    req.wait(timeout=20)
    req.post()
    req.wait(timeout=20)
    assert req.ready() and req.error is None
    async def both():  # requests are awaitable too
        await asyncio.gather(b.read(dst, src.remote_descriptor()), b.read(dst, src.desc_list(), "a"))
    asyncio.run(both())
    b.notify("a", "ping")
    assert a.wait_notification(timeout=20, peer="b", message=b"ping").message == b"ping"
    assert a.notifications() == []
    b.invalidate("a")
    assert not b.has_remote("a")


def test_publish_fetch_over_the_side_channel():
    owner, reader = kvbm.Agent("owner"), kvbm.Agent("reader")
    port = owner.listen("127.0.0.1", 0)
    owner.publish("raw", b"\x00\x01bytes")
    assert reader.fetch("127.0.0.1", port, "raw") == b"\x00\x01bytes"
    assert reader.fetch_metadata("127.0.0.1", port) == "owner"
    mem = kvbm.SystemAllocator().allocate(4096)
    owner.register(mem)
    owner.publish("mem", mem.remote_descriptor(b"n"))
    d = reader.fetch_descriptor("127.0.0.1", port, "mem", reload=True)
    assert d == mem.remote_descriptor(b"n")
    owner.unpublish("raw")
    with pytest.raises(kvbm.RemoteError, match="raw"):
        reader.fetch("127.0.0.1", port, "raw")


def test_agent_errors():
    with pytest.raises(kvbm.InvalidArgumentError):
        kvbm.Agent("")
    with pytest.raises(kvbm.NotFoundError, match="NOPE"):
        kvbm.Agent("x", backends=["NOPE"])
    with pytest.raises(TypeError, match="backends must be a list"):
        kvbm.Agent("x", backends="UCX")
    a = kvbm.Agent("errors")
    with pytest.raises(TypeError, match="timeout must be a number"):
        a.wait_notification(timeout="soon")
    with pytest.raises(TypeError, match="params must be a dict"):
        a.create_backend("GDS", params={"threads": 8})
    with pytest.raises(kvbm.AlreadyRegisteredError):
        a.create_backend("UCX")
    with pytest.raises(kvbm.NotFoundError):
        a.create_backend("NOPE")
    with pytest.raises(kvbm.InvalidArgumentError):
        a.load_metadata(b"not metadata")
    with pytest.raises(kvbm.NotFoundError):
        a.notify("nobody", b"hi")
    with pytest.raises(kvbm.NotFoundError):
        a.invalidate("nobody")
    with pytest.raises(kvbm.NotFoundError):
        a.unpublish("nothing")
    with pytest.raises(kvbm.InvalidArgumentError):
        a.publish("", b"x")
    with pytest.raises(kvbm.TimeoutError) as e:
        a.wait_notification(timeout=0.01)
    assert isinstance(e.value, TimeoutError) and e.value.code == kvbm.ErrorCode.TIMEOUT
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises((kvbm.IoError, kvbm.TimeoutError)) as e:
        a.fetch_metadata("127.0.0.1", port, timeout=2)
    assert isinstance(e.value, OSError)
    with pytest.raises(ValueError, match="port"):
        a.fetch_metadata("127.0.0.1", 70000)
    mem = kvbm.SystemAllocator().allocate(4096)
    with pytest.raises(kvbm.NotRegisteredError):
        mem.remote_descriptor()
    with pytest.raises(kvbm.NotRegisteredError):
        mem.deregister()
    remote = kvbm.RemoteDescriptor(0x1000, 4096, kvbm.MemType.DRAM, 0, "unknown-peer")
    a.register(mem)
    with pytest.raises(kvbm.Error):
        a.write(mem, remote)
    with pytest.raises(TypeError):
        a.register("memory")
    with pytest.raises(TypeError):
        a.write(b"bytes", remote)
    with pytest.raises(ValueError, match="peer is required"):
        a.write(mem, kvbm.DescList(kvbm.MemType.DRAM, [(0x1000, 4096, 0)]))
    mem.deregister()
    assert mem.registered_agent is None


def test_two_processes_write_with_notification():
    """A receiver publishes a descriptor of its memory on its side channel; a spawned
    process fetches it (and the receiver's metadata) and WRITEs into it with a
    notification; the receiver checks the bytes once notified."""
    nbytes = 4 << 20
    receiver = kvbm.Agent("receiver")
    dst = kvbm.SystemAllocator().allocate(nbytes)
    receiver.register(dst)
    port = receiver.listen("127.0.0.1", 0)
    receiver.publish("blocks", dst.remote_descriptor(b"written"))
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=writer, args=("127.0.0.1", port, "blocks", nbytes))
    child.start()
    try:
        n = receiver.wait_notification(timeout=60, message=b"written")
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert n.agent == "writer"
    assert (dst.view().numpy() == pattern(nbytes, 7)).all()


def test_register_memory_ranges():
    a = kvbm.Agent("ranges")
    arr = np.zeros(8192, dtype=np.uint8)
    d = kvbm.DescList(kvbm.MemType.DRAM, [(arr.ctypes.data, 8192, 0)])
    with a.register_memory(d) as reg:
        assert reg.regions == d
        with pytest.raises(kvbm.InvalidArgumentError, match="overlaps"):
            a.register_memory(d)
    assert reg.regions is None
    a.register_memory(d).release()  # free to register again
    over = kvbm.Storage.from_memory(arr)
    a.register(over)
    assert over.remote_descriptor().addr == arr.ctypes.data


@pytest.fixture
def etcd(tmp_path):
    """A real etcd on free 127.0.0.1 ports (as tests/support/etcd_server.cc starts one)."""
    if not os.access("/usr/bin/etcd", os.X_OK):
        pytest.skip("no /usr/bin/etcd")
    client, peer = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    proc = subprocess.Popen(
        ["/usr/bin/etcd", "--name", "kvbm-py", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"kvbm-py={peer}", "--logger", "zap",
         "--log-outputs", str(tmp_path / "etcd.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield client
    finally:
        proc.kill()
        proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metadata_and_items_through_etcd(etcd):
    key = b"k" * 16
    a = kvbm.Agent("etcd-a", backends=["POSIX"], add_cuda_if_gpu=False, etcd_endpoints=[etcd],
                   etcd_prefix="pytest/", auth_key=key)
    b = kvbm.Agent("etcd-b", backends=["POSIX"], add_cuda_if_gpu=False, etcd_endpoints=[etcd],
                   etcd_prefix="pytest/", auth_key=key)
    for _ in range(400):  # until etcd has elected itself leader and answers
        try:
            a.publish_metadata()
            break
        except kvbm.IoError:
            time.sleep(0.05)
    else:
        pytest.fail(f"etcd at {etcd} did not answer")
    a.publish("blocks/7", b"seven")
    assert b.fetch_remote_metadata("etcd-a") == "etcd-a" and b.has_remote("etcd-a")
    assert b.fetch_published("etcd-a", "blocks/7") == b"seven"
    with pytest.raises(kvbm.NotFoundError, match="etcd-c"):
        b.fetch_remote_metadata("etcd-c")
    a.withdraw_metadata()
    with pytest.raises(kvbm.NotFoundError, match="blocks/7"):
        b.fetch_published("etcd-a", "blocks/7")
    plain = kvbm.Agent("plain", backends=["POSIX"], add_cuda_if_gpu=False)
    with pytest.raises(kvbm.UnsupportedError):
        plain.publish_metadata()
    with pytest.raises(ValueError, match="etcd_lease_ttl"):
        kvbm.Agent("x", backends=["POSIX"], etcd_lease_ttl=0)
