"""kvbm: KV-cache blocks across GPU memory, host memory, files and peer processes.

Layouts of KV blocks on any tier, zero-copy views of their blocks through DLPack
(numpy.from_dlpack, torch.from_dlpack), a transfer engine that copies lists of blocks
between any two layouts, and a transfer agent (NIXL's model) that READs and WRITEs
a peer's registered memory, with notifications; and the block manager: token sequences
with Dynamo-compatible hashes, block pools on G1/G2/G3 with prefix match, offload and
onboard between them, events and counters. Every blocking call releases the GIL;
transfers and requests are awaitable in asyncio. Errors raise kvbm.Error subclasses.
"""

import asyncio as _asyncio
import concurrent.futures as _futures
import threading as _threading

from . import _errors
from ._errors import *  # noqa: F401,F403
from ._errors import Error, TimeoutError  # noqa: A004
from ._kvbm import (
    Agent,
    BlockManager,
    BlockManagerConfig,
    BlockPool,
    BlockState,
    CudaHostEngine,
    DescList,
    DeviceAllocator,
    DiskAllocator,
    ErrorCode,
    Event,
    EventKind,
    ExternalG1,
    ExternalLoad,
    ExternalSave,
    ImmutableBlock,
    LayerOrder,
    Layout,
    LayoutConfig,
    LayoutKind,
    MatchResult,
    MemoryRegistration,
    MemType,
    MutableBlock,
    Notification,
    OffloadOptions,
    OnboardResult,
    Op,
    PinnedAllocator,
    RemoteDescriptor,
    Request,
    SequenceBlock,
    Storage,
    StorageKind,
    SystemAllocator,
    Tier,
    TokenSequence,
    Transfer,
    TransferEngine,
    TransferEngineOptions,
    TransferPath,
    View,
    XferState,
    block_hash,
    built_with_cuda,
    cuda_device_count,
    salt_hash,
    sequence_hash,
    set_log_level,
)

__version__ = "0.1.0"
__all__ = [
    "Agent", "BlockManager", "BlockManagerConfig", "BlockPool", "BlockState", "CudaHostEngine",
    "DescList", "DeviceAllocator", "DiskAllocator", "ErrorCode", "LayerOrder",
    "Layout", "LayoutConfig", "LayoutKind", "MemoryRegistration", "MemType", "Notification",
    "Op", "PinnedAllocator", "RemoteDescriptor", "Request", "Storage", "StorageKind",
    "SystemAllocator", "Transfer", "TransferEngine", "TransferPath", "View", "XferState",
    "built_with_cuda", "cuda_device_count", "gpu_count", "set_log_level",
    "Event", "EventKind", "ImmutableBlock", "MatchResult", "MutableBlock", "OffloadOptions",
    "OnboardResult", "SequenceBlock", "Tier", "TokenSequence", "TransferEngineOptions",
    "block_hash", "salt_hash", "sequence_hash",
    "ExternalG1", "ExternalLoad", "ExternalSave",
] + [n for n in _errors.__all__ if n != "TimeoutError"]  # a star import would shadow the builtin


def gpu_count() -> int:
    """The number of usable GPUs, 0 where there is none (no error)."""
    try:
        return cuda_device_count()
    except Error:
        return 0


# Awaiting: a finished transfer or request completes at once; otherwise one of these
# threads waits for it (without the GIL) and wakes the event loop.
_waiters = None
_waiters_lock = _threading.Lock()


def _waiter_pool() -> _futures.ThreadPoolExecutor:
    global _waiters
    with _waiters_lock:
        if _waiters is None:
            _waiters = _futures.ThreadPoolExecutor(max_workers=64,
                                                   thread_name_prefix="kvbm-wait")
        return _waiters


async def _wait_async(self, timeout=None):
    if self.ready():
        return self.wait(0)
    loop = _asyncio.get_running_loop()
    return await loop.run_in_executor(_waiter_pool(), self.wait, timeout)


def _await(self):
    return _wait_async(self).__await__()


for _cls in (Transfer, Request):
    _cls.wait_async = _wait_async
    _cls.wait_async.__doc__ = ("Awaitable wait(): `await t.wait_async(timeout)`; "
                               "`await t` is the same without a timeout.")
    _cls.__await__ = _await
del _cls


def _view_numpy(self):
    """The view as a writable numpy array over its memory (host memory only)."""
    import numpy
    return numpy.asarray(self)


View.numpy = _view_numpy


def _descriptor_from_bytes(data: bytes) -> RemoteDescriptor:
    return RemoteDescriptor.from_bytes(data)


# Pickled as its CBOR bytes (a function pybind11 defines cannot be pickled by reference).
RemoteDescriptor.__reduce__ = lambda self: (_descriptor_from_bytes, (self.to_bytes(),))
