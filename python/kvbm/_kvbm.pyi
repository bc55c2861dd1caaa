# Type stubs of kvbm's C++ extension (python/src). Every blocking call releases the GIL.
# Errors: kvbm.Error subclasses (kvbm._errors) carrying .code and .message; TypeError and
# ValueError for arguments of the wrong type or value.
import enum
from typing import Any, Generator, Iterable, Mapping, Optional, Sequence, Tuple, Union

from ._errors import Error

BytesLike = Union[bytes, bytearray, memoryview, str]
BlockIds = Union[Sequence[int], Iterable[int]]
# An object with __dlpack__ (numpy array, torch tensor) or (address, size, device), where
# device is "cpu", "pinned", "cuda", "cuda:N" or a (DLPack device type, id) tuple.
Memory = Any

class ErrorCode(enum.Enum):
    ALLOCATION_FAILED: ErrorCode
    OUT_OF_BOUNDS: ErrorCode
    REGISTRATION_FAILED: ErrorCode
    ALREADY_REGISTERED: ErrorCode
    NOT_REGISTERED: ErrorCode
    DEVICE_UNAVAILABLE: ErrorCode
    INVALID_ARGUMENT: ErrorCode
    IO: ErrorCode
    UNSUPPORTED: ErrorCode
    NOT_FOUND: ErrorCode
    TIMEOUT: ErrorCode
    REMOTE: ErrorCode
    CANCELLED: ErrorCode
    INTERNAL: ErrorCode

class StorageKind(enum.Enum):
    SYSTEM: StorageKind
    PINNED: StorageKind
    DEVICE: StorageKind
    DISK: StorageKind
    REMOTE: StorageKind
    NULL: StorageKind

class MemType(enum.Enum):
    DRAM: MemType
    VRAM: MemType
    FILE: MemType
    UNKNOWN: MemType

class LayoutKind(enum.Enum):
    FULLY_CONTIGUOUS: LayoutKind
    LAYER_SEPARATE: LayoutKind

class LayerOrder(enum.Enum):
    BLOCK_MAJOR: LayerOrder
    OUTER_MAJOR: LayerOrder

class TransferPath(enum.Enum):
    HOST: TransferPath
    CUDA: TransferPath
    FILE: TransferPath
    REMOTE: TransferPath
    STAGED: TransferPath

class Op(enum.Enum):
    READ: Op
    WRITE: Op

class XferState(enum.Enum):
    IDLE: XferState
    IN_PROGRESS: XferState
    DONE: XferState
    ERROR: XferState

def built_with_cuda() -> bool: ...
def cuda_device_count() -> int:
    """Usable GPUs; DeviceUnavailableError when there are none."""
def set_log_level(level: str) -> None: ...

class DescList:
    def __init__(self, mem_type: MemType, descs: Sequence[Tuple[int, int, int]] = ...) -> None: ...
    @property
    def mem_type(self) -> MemType: ...
    @property
    def descs(self) -> list[Tuple[int, int, int]]: ...
    def append(self, addr: int, len: int, dev_id: int = 0) -> None: ...
    def __len__(self) -> int: ...

class RemoteDescriptor:
    def __init__(self, addr: int, size: int, mem_type: MemType, device_id: int, agent: str,
                 notification: Optional[BytesLike] = None) -> None: ...
    addr: int
    size: int
    mem_type: MemType
    device_id: int
    agent: str
    notification: Optional[bytes]
    def desc_list(self) -> DescList: ...
    def slice(self, offset: int, size: int) -> RemoteDescriptor: ...
    def to_bytes(self) -> bytes: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_bytes(data: BytesLike) -> RemoteDescriptor: ...
    @staticmethod
    def from_json(text: BytesLike) -> RemoteDescriptor: ...

class View:
    """An n-D array over kvbm memory; keeps the memory alive."""
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    dtype: str
    addr: int
    nbytes: int
    __array_interface__: dict
    def __dlpack__(self, *, stream: Optional[int] = None,
                   max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None,
                   copy: Optional[bool] = None) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def numpy(self) -> Any: ...

class Storage:
    @staticmethod
    def from_memory(memory: Memory, *, pin: bool = False) -> Storage: ...
    kind: StorageKind
    addr: int
    size: int
    device_id: int
    path: Optional[str]
    registered_agent: Optional[str]
    def desc_list(self) -> DescList: ...
    def remote_descriptor(self, notification: Optional[BytesLike] = None) -> RemoteDescriptor: ...
    def deregister(self) -> None: ...
    def view(self) -> View: ...
    def __dlpack__(self, *, stream: Optional[int] = None,
                   max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None,
                   copy: Optional[bool] = None) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

class SystemAllocator:
    def __init__(self, *, shareable: bool = False) -> None: ...
    def allocate(self, size: int) -> Storage: ...

class PinnedAllocator:
    def __init__(self) -> None: ...
    def allocate(self, size: int) -> Storage: ...

class DeviceAllocator:
    def __init__(self, ordinal: int = 0) -> None: ...
    ordinal: int
    def allocate(self, size: int) -> Storage: ...

class DiskAllocator:
    def __init__(self, dir: Optional[Any] = None) -> None: ...
    dir: str
    def allocate(self, size: int) -> Storage: ...

Allocator = Union[SystemAllocator, PinnedAllocator, DeviceAllocator, DiskAllocator]

class LayoutConfig:
    def __init__(self, *, num_blocks: int, num_layers: int, outer_dim: int = 2,
                 page_size: int, inner_dim: int, dtype_bytes: int = 2,
                 alignment: int = 1) -> None: ...
    num_blocks: int
    num_layers: int
    outer_dim: int
    page_size: int
    inner_dim: int
    dtype_bytes: int
    alignment: int
    chunk_bytes: int
    block_bytes: int
    def replace(self, **fields: int) -> LayoutConfig: ...

class Layout:
    @staticmethod
    def allocate(config: LayoutConfig, allocator: Allocator, *,
                 kind: LayoutKind = LayoutKind.FULLY_CONTIGUOUS,
                 order: LayerOrder = LayerOrder.BLOCK_MAJOR,
                 dtype: Optional[Any] = None) -> Layout: ...
    @staticmethod
    def from_memory(memory: Union[Memory, Sequence[Memory]],
                    config: Optional[LayoutConfig] = None, *,
                    kind: Optional[LayoutKind] = None,
                    order: LayerOrder = LayerOrder.BLOCK_MAJOR, pin: bool = False) -> Layout: ...
    @staticmethod
    def from_bytes(data: BytesLike) -> Layout: ...
    @staticmethod
    def from_json(text: BytesLike) -> Layout: ...
    def to_bytes(self) -> bytes: ...
    def to_json(self) -> str: ...
    config: LayoutConfig
    kind: LayoutKind
    order: LayerOrder
    num_blocks: int
    storage_kind: StorageKind
    device_id: int
    dtype: str
    is_remote: bool
    remote_agent: str
    regions: list[Tuple[int, int]]
    def memory_region(self, block: int, layer: int, outer: int = 0) -> Tuple[int, int]: ...
    def same_shape(self, other: Layout) -> bool: ...
    def block(self, block: int, layer: Optional[int] = None) -> View: ...
    def chunk(self, block: int, layer: int, outer: int = 0) -> View: ...
    def view(self, layer: Optional[int] = None) -> View: ...
    def checksum(self, blocks: Optional[BlockIds] = None) -> int: ...

class CudaHostEngine(enum.Enum):
    AUTO: CudaHostEngine
    KERNEL: CudaHostEngine
    BATCH: CudaHostEngine
    SPLIT: CudaHostEngine
    GATHER: CudaHostEngine

class TransferEngineOptions:
    def __init__(self, *, host_threads: int = 0, uring_queue_depth: int = 64,
                 staging_bytes: int = 64 << 20,
                 cuda_host_engine: CudaHostEngine = CudaHostEngine.AUTO) -> None: ...
    host_threads: int
    uring_queue_depth: int
    staging_bytes: int
    cuda_host_engine: CudaHostEngine

class Transfer:
    def wait(self, timeout: Optional[float] = None) -> None: ...
    def ready(self) -> bool: ...
    async def wait_async(self, timeout: Optional[float] = None) -> None: ...
    def __await__(self) -> Generator[Any, None, None]: ...
    path: TransferPath
    bytes: int
    chunks: int

class TransferEngine:
    def __init__(self, *, host_threads: int = 0, uring_queue_depth: int = 64,
                 staging_bytes: int = 64 << 20,
                 cuda_host_engine: CudaHostEngine = CudaHostEngine.AUTO) -> None: ...
    def copy(self, src: Layout, src_ids: BlockIds, dst: Layout,
             dst_ids: Optional[BlockIds] = None, *, agent: Optional[Agent] = None,
             notification: Optional[BytesLike] = None) -> Transfer: ...
    def path_for(self, src: Layout, dst: Layout) -> TransferPath: ...
    def register_host_layout(self, layout: Layout) -> None: ...
    def cuda_host_engine(self, ordinal: int, to_device: bool, chunk_bytes: int) -> CudaHostEngine:
        """KERNEL or BATCH for pinned <-> GPU `ordinal` copies of chunk_bytes chunks;
        DeviceUnavailableError without a usable GPU."""
    host_threads: int
    file_fixed_ios: int

class Notification:
    agent: str
    message: bytes

class MemoryRegistration:
    regions: Optional[DescList]
    def release(self) -> None: ...
    def __enter__(self) -> MemoryRegistration: ...
    def __exit__(self, *exc: Any) -> None: ...

class Request:
    def post(self) -> None: ...
    state: XferState
    def ready(self) -> bool: ...
    error: Optional[Exception]
    def wait(self, timeout: Optional[float] = None) -> None: ...
    async def wait_async(self, timeout: Optional[float] = None) -> None: ...
    def __await__(self) -> Generator[Any, None, None]: ...

class PreparedDescs:
    @property
    def agent(self) -> str: ...
    @property
    def descs(self) -> DescList: ...
    def __len__(self) -> int: ...

class Agent:
    def __init__(self, name: str, *, backends: Optional[Sequence[str]] = None,
                 progress_thread: bool = True, peer_timeout: float = 5.0,
                 add_cuda_if_gpu: bool = True, max_metadata_bytes: int = 64 << 20,
                 etcd_endpoints: Optional[Sequence[str]] = None, etcd_prefix: str = "",
                 etcd_lease_ttl: float = 10.0, auth_key: Optional[BytesLike] = None) -> None: ...
    name: str
    backends: list[str]
    def create_backend(self, type: str, params: Optional[Mapping[str, str]] = None) -> None: ...
    def register(self, obj: Union[Storage, Layout], *, backend: Optional[str] = None) -> None: ...
    def register_memory(self, regions: DescList, *,
                        backend: Optional[str] = None) -> MemoryRegistration: ...
    def metadata(self) -> bytes: ...
    def load_metadata(self, metadata: BytesLike) -> str: ...
    def invalidate(self, peer: str) -> None: ...
    def has_remote(self, peer: str) -> bool: ...
    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int: ...
    def fetch_metadata(self, host: str, port: int, timeout: Optional[float] = 5.0) -> str: ...
    def publish(self, key: str, value: Union[BytesLike, RemoteDescriptor]) -> None: ...
    def unpublish(self, key: str) -> None: ...
    def fetch(self, host: str, port: int, key: str, timeout: Optional[float] = 5.0) -> bytes: ...
    def fetch_descriptor(self, host: str, port: int, key: str, timeout: Optional[float] = 5.0,
                         *, reload: bool = False) -> RemoteDescriptor: ...
    # etcd discovery (etcd_endpoints): UnsupportedError without endpoints, IoError when
    # etcd is unreachable, NotFoundError for a name or key etcd does not hold.
    def publish_metadata(self) -> None: ...
    def withdraw_metadata(self) -> None: ...
    def fetch_remote_metadata(self, name: str) -> str: ...
    def fetch_published(self, name: str, key: str) -> bytes: ...
    def request(self, op: Op, local: Union[Storage, DescList],
                remote: Union[RemoteDescriptor, DescList], peer: Optional[str] = None, *,
                notification: Optional[BytesLike] = None, post: bool = True) -> Request: ...
    def read(self, local: Union[Storage, DescList], remote: Union[RemoteDescriptor, DescList],
             peer: Optional[str] = None, *,
             notification: Optional[BytesLike] = None) -> Request: ...
    def write(self, local: Union[Storage, DescList], remote: Union[RemoteDescriptor, DescList],
              peer: Optional[str] = None, *,
              notification: Optional[BytesLike] = None) -> Request: ...
    def notify(self, peer: str, message: BytesLike) -> None: ...
    def notifications(self) -> list[Notification]: ...
    def wait_notification(self, timeout: Optional[float] = 5.0, *, peer: Optional[str] = None,
                          message: Optional[BytesLike] = None) -> Notification: ...
    def progress(self) -> None: ...
    def prepare(self, descs: DescList, agent: str) -> PreparedDescs: ...
    def request_prepared(self, op: Op, local: PreparedDescs, local_indices: Sequence[int],
                         remote: PreparedDescs, remote_indices: Sequence[int], *,
                         notification: Optional[BytesLike] = None,
                         post: bool = True) -> Request: ...

# ---- the block manager (kvbm/pool.h) ------------------------------------------------------

# Tokens: 0..2^32-1; hashes: 0..2^64-1. Lists of them: sequences or iterables of ints, or
# 1-D integer numpy arrays (read without a per-item cost).
Tokens = Union[Sequence[int], Iterable[int], Any]
Hashes = Union[Sequence[int], Iterable[int], Any]

def salt_hash(salt: BytesLike) -> int:
    """XXH3-64 of the salt (seed 0); 0 for an empty one."""
def block_hash(tokens: Tokens, salt_hash: int = 0) -> int:
    """XXH3-64 of the tokens as little-endian u32 bytes, seeded with the salt hash."""
def sequence_hash(parent: int, block: int, salt_hash: int = 0) -> int:
    """XXH3-64 of (parent sequence hash, block hash) as little-endian u64s."""

class SequenceBlock:
    def __init__(self, block_hash: int, sequence_hash: int,
                 parent_hash: Optional[int] = None) -> None: ...
    block_hash: int
    sequence_hash: int
    parent_hash: Optional[int]

class TokenSequence:
    """Tokens split into full blocks (hashed as they fill) and a tail. Not thread-safe."""
    def __init__(self, block_size: int, tokens: Optional[Tokens] = None, *,
                 salt: Optional[BytesLike] = None, salt_hash: Optional[int] = None) -> None: ...
    def append(self, token: int) -> int: ...
    def extend(self, tokens: Tokens) -> int: ...
    def truncate(self, num_tokens: int) -> None: ...
    def __len__(self) -> int: ...
    def block(self, index: int) -> SequenceBlock: ...
    block_size: int
    salt_hash: int
    num_blocks: int
    tokens: list[int]
    tail: list[int]
    block_hashes: list[int]
    sequence_hashes: list[int]
    blocks: list[SequenceBlock]

class Tier(enum.Enum):
    G1: Tier
    G2: Tier
    G3: Tier

class BlockState(enum.Enum):
    RESET: BlockState
    PARTIAL: BlockState
    COMPLETE: BlockState
    REGISTERED: BlockState

class EventKind(enum.Enum):
    STORED: EventKind
    REMOVED: EventKind

class Event:
    kind: EventKind
    tier: Tier
    sequence_hash: int
    parent_hash: Optional[int]

class MutableBlock:
    """A G1 block being filled; dropping it (or release()) frees the block."""
    empty: bool
    block_id: int
    tier: Tier
    state: BlockState
    key: Optional[SequenceBlock]
    def begin_fill(self) -> None: ...
    def complete(self, key: SequenceBlock) -> None: ...
    def reset(self) -> None: ...
    def release(self) -> None: ...

class ImmutableBlock:
    """A reference to a registered block (not evicted while one lives)."""
    empty: bool
    block_id: int
    tier: Tier
    sequence_hash: int
    parent_hash: Optional[int]
    def release(self) -> None: ...

class MatchResult:
    g1: list[ImmutableBlock]
    g2: list[ImmutableBlock]
    g3: list[ImmutableBlock]
    def __len__(self) -> int: ...
    def release(self) -> None: ...

class OnboardResult:
    blocks: list[ImmutableBlock]
    failed: list[int]
    error: Optional[Error]
    ok: bool

class OffloadOptions:
    def __init__(self, *, enabled: bool = True, queue_capacity: int = 4096,
                 max_batch: int = 1024, disk_min_hits: int = 2,
                 hit_decay_period: float = 60.0, filter_capacity: int = 1 << 20,
                 g1_to_g3_bypass: bool = False) -> None: ...
    enabled: bool
    queue_capacity: int
    max_batch: int
    disk_min_hits: int
    hit_decay_period: float
    filter_capacity: int
    g1_to_g3_bypass: bool

class BlockManagerConfig:
    def __init__(self, block: LayoutConfig, *, g1_blocks: int = 0, g2_blocks: int = 0,
                 g3_blocks: int = 0, kind: LayoutKind = LayoutKind.FULLY_CONTIGUOUS,
                 disk_dir: Optional[Any] = None, use_gpu: bool = True, device: int = 0,
                 offload: Optional[OffloadOptions] = None,
                 engine: Optional[TransferEngineOptions] = None) -> None: ...
    block: LayoutConfig
    kind: LayoutKind
    g1_blocks: int
    g2_blocks: int
    g3_blocks: int
    disk_dir: Optional[str]
    use_gpu: bool
    device: int
    offload: OffloadOptions
    engine: TransferEngineOptions
    block_bytes: int
    def apply_env_overrides(self) -> None:
        """g2_blocks from KVBM_CPU_CACHE_GB, g3_blocks from KVBM_DISK_CACHE_GB (GiB)."""

class BlockPool:
    tier: Tier
    num_blocks: int
    bookkeeping_bytes: int
    def contains(self, sequence_hash: int) -> bool: ...
    def remove(self, block: ImmutableBlock) -> None: ...
    def clear_inactive(self) -> int: ...
    def counters(self) -> dict[str, int]: ...

class BlockManager:
    """Pools on G1/G2/G3, prefix match, offload and onboard. Thread-safe."""
    def __init__(self, config: BlockManagerConfig, *, events: bool = False,
                 g1: Optional[Layout] = None, g2: Optional[Layout] = None,
                 g3: Optional[Layout] = None) -> None: ...
    def has_tier(self, tier: Tier) -> bool: ...
    tiers: list[Tier]
    block_size: int
    def layout(self, tier: Tier, dtype: Optional[Any] = None) -> Layout: ...
    def pool(self, tier: Tier) -> BlockPool: ...
    def allocate(self, n: int) -> list[MutableBlock]: ...
    def register(self, block: MutableBlock, priority: int = 0) -> ImmutableBlock: ...
    def match(self, sequence_hashes: Hashes) -> MatchResult: ...
    def onboard(self, match: MatchResult) -> OnboardResult: ...
    def flush(self, timeout: float = 60.0) -> None: ...
    def counters(self) -> dict[str, Any]: ...
    def events(self) -> list[Event]:
        """Drains the recorded events (needs events=True)."""

# ---- an engine-owned G1 (kvbm.vllm's core) -------------------------------------------------
# BlockManager(config, *, events=False, g1=None, g2=None, g3=None): Layouts the caller made
# (g1: an engine's paged KV cache), used instead of allocating those tiers.

class ExternalSave:
    """A save of engine blocks into G2; finish() -> {saved, present, dropped, error}."""
    def ready(self) -> bool: ...
    def finish(self) -> dict[str, Any]: ...

class ExternalLoad:
    """A layer-wise load into engine block ids; finish() -> {loaded, failed_ids, error}."""
    num_layers: int
    blocks: int
    def wait_layer(self, layer: int) -> None: ...
    def ready(self) -> bool: ...
    def finish(self) -> dict[str, Any]: ...

class ExternalG1:
    """A block manager whose G1 is an engine's paged KV cache (every tier LAYER_SEPARATE)."""
    def __init__(self, manager: BlockManager) -> None: ...
    num_layers: int
    engine_blocks: int
    def peek(self, sequence: Union[TokenSequence, Hashes], first_block: int = 0,
             count: Optional[int] = None) -> Tuple[int, int]:
        """(g2, g3) consecutive blocks a load would find; no handle, counter, event or I/O."""
    def save(self, engine_ids: Sequence[int], sequence: TokenSequence,
             first_block: int = 0) -> ExternalSave: ...
    def load(self, sequence: Union[TokenSequence, Hashes], engine_ids: Sequence[int],
             first_block: int = 0) -> ExternalLoad: ...
