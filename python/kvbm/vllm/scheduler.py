"""The scheduler half of KvbmConnector: lookups, load and save plans, no I/O.

get_num_new_matched_tokens is on the scheduler's hot path and may be called many times per
request, so it is side-effect free: the request's tokens are hashed in C++ (a
kvbm.TokenSequence kept per request and extended by the new tokens only), and
ExternalG1.peek walks the pools without taking a block, touching a counter or a file."""

from typing import Dict, List, Optional, Tuple

from .._kvbm import TokenSequence
from ._meta import KvbmConnectorMetadata, LoadSpec, SaveSpec
from ._shared import Shared


def request_salt(request) -> str:
    """The salt of a request's hashes: its cache salt and its LoRA adapter (name and id), so
    tenants and adapters never match each other. Empty (salt hash 0) when it has neither."""
    parts = []
    cache_salt = getattr(request, "cache_salt", None)
    if cache_salt:
        parts.append("salt=" + str(cache_salt))
    lora = getattr(request, "lora_request", None)
    if lora is not None:
        parts.append(f"lora={getattr(lora, 'lora_name', '')}#{getattr(lora, 'lora_int_id', '')}")
    return "\x1f".join(parts)


def _block_ids(blocks) -> List[int]:
    """Engine block ids of the first KV cache group (vLLM's KVCacheBlocks, or a plain list)."""
    if hasattr(blocks, "get_block_ids"):
        groups = blocks.get_block_ids()
        return list(groups[0]) if groups else []
    if blocks and isinstance(blocks[0], (list, tuple)):
        return list(blocks[0])
    return list(blocks)


class SchedulerSide:
    def __init__(self, shared: Shared, block_size: int):
        self._shared = shared
        self._bs = block_size
        self._seqs: Dict[str, TokenSequence] = {}
        self._matched: Dict[str, Tuple[int, int]] = {}  # request -> (first block, blocks)
        self._loads: list = []
        self._saves: list = []
        self._loading: set = set()  # asynchronous loads not yet reported done

    def sequence(self, request) -> TokenSequence:
        """The request's hashed tokens, extended by those added since the last call."""
        rid = request.request_id
        seq = self._seqs.get(rid)
        if seq is None:
            seq = self._seqs[rid] = TokenSequence(self._bs, salt=request_salt(request))
        tokens = request.all_token_ids
        have = len(seq)
        if len(tokens) > have:
            seq.extend(tokens[have:] if have else tokens)  # no copy of a new prompt
        return seq

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> Tuple[int, bool]:
        external = self._shared.external
        if external is None or num_computed_tokens % self._bs:
            return 0, False
        seq = self.sequence(request)
        first = num_computed_tokens // self._bs
        # Full blocks only, and one token always left for the engine to compute.
        limit = (request.num_tokens - 1) // self._bs
        if limit <= first:
            return 0, False
        g2, g3 = external.peek(seq, first, limit - first)
        n = g2 + g3
        if n == 0:
            self._matched.pop(request.request_id, None)
            return 0, False
        self._matched[request.request_id] = (first, n)
        return n * self._bs, bool(self._shared.settings.load_async)

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        plan = self._matched.pop(request.request_id, None)
        if num_external_tokens <= 0 or plan is None:
            return
        first, n = plan
        n = min(n, num_external_tokens // self._bs)
        ids = _block_ids(blocks)[first:first + n]
        if not ids:
            return
        seq = self._seqs[request.request_id]
        hashes = seq.sequence_hashes[first:first + len(ids)]
        self._loads.append(LoadSpec(request.request_id, hashes, ids))
        if self._shared.settings.load_async:
            self._loading.add(request.request_id)
        self._shared.stats.add(matched_tokens=len(ids) * self._bs)

    def build_connector_meta(self, scheduler_output):
        meta = KvbmConnectorMetadata(self._loads, self._saves,
                                     bool(self._shared.settings.load_async))
        self._loads, self._saves = [], []
        return meta

    def update_connector_output(self, connector_output) -> None:
        for rid in getattr(connector_output, "finished_recving", None) or ():
            self._loading.discard(rid)

    def request_finished(self, request, block_ids) -> Tuple[bool, Optional[dict]]:
        """Saves the request's full, computed blocks; True (blocks kept) until the worker
        reports the save done through get_finished. A request finished (aborted) while its
        asynchronous load still writes its blocks keeps them too, until the load is done."""
        seq = self.sequence(request) if self._shared.external is not None else None
        self._seqs.pop(request.request_id, None)
        self._matched.pop(request.request_id, None)
        loading = request.request_id in self._loading
        self._loading.discard(request.request_id)
        if seq is None:
            return False, None
        ids = _block_ids(block_ids)
        computed = min(int(getattr(request, "num_computed_tokens", 0)), len(seq))
        n = min(computed // self._bs, len(ids), seq.num_blocks)
        publishable = getattr(request, "num_publishable_block_hashes", None)  # newer vLLM
        if isinstance(publishable, int):
            n = min(n, publishable)
        if n == 0 and not loading:
            return False, None
        self._saves.append(SaveSpec(request.request_id, seq, ids[:n]))
        return True, None
