"""A replay harness for kvbm.vllm.KvbmConnector: drives one scheduler-side and one worker-side
connector in vLLM v1's call order, with torch CPU tensors as the paged KV cache (one tensor
per layer, [2, num_blocks, block_size, num_kv_heads, head_size]).

The engine is modelled as far as the connector sees it: requests run one at a time; the
engine's own prefix cache (optional) is an LRU of freed blocks keyed by kvbm's sequence
hashes; "computing" a block writes bytes derived from its sequence hash, so blocks of a
shared prefix are equal wherever they were computed. Written from vLLM's documented
interface; no vLLM code."""

import itertools
from collections import OrderedDict
from types import SimpleNamespace

import torch

from kvbm.vllm import KvbmConnector, KVConnectorRole

LAYERS, BLOCK, HEADS, HEAD = 4, 16, 2, 8
_ids = itertools.count()


class Request:
    """The fields of vllm.v1.request.Request the connector reads."""

    def __init__(self, tokens, *, cache_salt=None, lora=None):
        self.request_id = f"req-{next(_ids)}"
        self.prompt_token_ids = list(tokens)
        self.all_token_ids = list(tokens)
        self.num_computed_tokens = 0
        self.cache_salt = cache_salt
        self.lora_request = (SimpleNamespace(lora_name=lora[0], lora_int_id=lora[1])
                             if lora else None)

    @property
    def num_tokens(self):
        return len(self.all_token_ids)


class Blocks:
    """vLLM's KVCacheBlocks, as far as get_block_ids() goes (one KV cache group)."""

    def __init__(self, ids):
        self._ids = list(ids)

    def get_block_ids(self):
        return (list(self._ids),)


def vllm_config(engine_id, **extra):
    tc = SimpleNamespace(engine_id=engine_id, kv_connector="KvbmConnector",
                         kv_connector_module_path="kvbm.vllm", kv_role="kv_both",
                         kv_connector_extra_config=extra)
    return SimpleNamespace(kv_transfer_config=tc, cache_config=SimpleNamespace(block_size=BLOCK))


def block_bytes_for(seq_hash, layer):
    """The deterministic K/V content of a block: [2, BLOCK, HEADS, HEAD] fp16."""
    g = torch.Generator().manual_seed((seq_hash ^ (layer * 0x9E3779B97F4A7C15)) & (2**63 - 1))
    return torch.randn(2, BLOCK, HEADS, HEAD, generator=g).to(torch.float16)


class Engine:
    """The engine side of the harness: paged KV tensors, a block allocator with an optional
    prefix cache, and the two connectors."""

    def __init__(self, num_blocks, *, prefix_cache=False, **extra):
        self.engine_id = f"harness-{next(_ids)}"
        cfg = vllm_config(self.engine_id, **extra)
        self.sched = KvbmConnector(cfg, KVConnectorRole.SCHEDULER)
        self.worker = KvbmConnector(cfg, KVConnectorRole.WORKER)
        self.kv = {f"model.layers.{i}.self_attn": torch.zeros(2, num_blocks, BLOCK, HEADS, HEAD,
                                                               dtype=torch.float16)
                   for i in range(LAYERS)}
        self.worker.register_kv_caches(self.kv)
        self.free = list(range(num_blocks))  # uncached free blocks
        self.cached = OrderedDict()  # seq hash -> block id, freed blocks in LRU order
        self.prefix_cache = prefix_cache
        self.load_errors = set()
        self.finished_recving = set()
        self.finished_sending = set()
        self.finished_ids = set()  # told to the worker next step (vLLM's finished_req_ids)

    @property
    def shared(self):
        return self.worker.shared

    def close(self):
        self.worker.shutdown()

    # ---- the engine's own blocks ------------------------------------------------------------

    def _allocate(self, n):
        out = []
        for _ in range(n):
            if self.free:
                out.append(self.free.pop(0))
            else:
                _, bid = self.cached.popitem(last=False)  # evict the LRU cached block
                out.append(bid)
        return out

    def _local_hits(self, seq, limit):
        if not self.prefix_cache:
            return []
        ids = []
        for h in seq.sequence_hashes[:limit]:
            if h not in self.cached:
                break
            ids.append(self.cached.pop(h))  # in use again
        return ids

    def _release(self, seq, ids, computed_blocks):
        for i, bid in enumerate(ids):
            if self.prefix_cache and i < computed_blocks:
                h = seq.sequence_hashes[i]
                if h in self.cached:  # a duplicate: the first stays cached
                    self.free.append(bid)
                else:
                    self.cached[h] = bid
            else:
                self.free.append(bid)

    # ---- one engine step --------------------------------------------------------------------

    def step(self, compute=()):
        """build_connector_meta, then the worker's calls in a step's order; `compute` lists
        (engine block id, sequence hash) blocks the forward pass writes."""
        meta = self.sched.build_connector_meta(SimpleNamespace())
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(None)
        for li, name in enumerate(self.kv):
            self.worker.wait_for_layer_load(name)
            for bid, h in compute:
                self.kv[name][:, bid] = block_bytes_for(h, li)
            self.worker.save_kv_layer(name, self.kv[name], None)
        self.worker.wait_for_save()
        sending, recving = self.worker.get_finished(self.finished_ids)
        self.finished_ids = set()
        self.finished_sending |= sending or set()
        self.finished_recving |= recving or set()
        self.sched.update_connector_output(SimpleNamespace(finished_sending=sending,
                                                           finished_recving=recving))
        self.load_errors |= self.worker.get_block_ids_with_load_errors()
        self.worker.clear_connector_metadata()
        return meta

    def _step_until(self, request_id, done, what):
        """Steps until the worker reports `request_id` in `done`: one step, and if it is not
        there yet, the worker's pending copies waited for and one more (no timing)."""
        self.step()
        if request_id not in done:
            self.worker._worker.drain()
            self.step()
        if request_id not in done:
            raise AssertionError(f"{request_id} never reported its {what} done")

    def run(self, req):
        """Schedules `req` (prefill only), computes what was not loaded, finishes it and
        steps until its save is reported. Returns (local blocks, external tokens, ids)."""
        seq = self.sched._scheduler.sequence(req)
        limit = (req.num_tokens - 1) // BLOCK
        local = self._local_hits(seq, limit)
        n_local = len(local) * BLOCK
        ext, is_async = self.sched.get_num_new_matched_tokens(req, n_local)
        need = -(-req.num_tokens // BLOCK)
        ids = local + self._allocate(need - len(local))
        self.sched.update_state_after_alloc(req, Blocks(ids), ext)
        first = (n_local + ext) // BLOCK
        full = req.num_tokens // BLOCK
        compute = [(ids[i], seq.sequence_hashes[i]) for i in range(first, full)]
        if is_async:  # waits for its KV before it runs
            self._step_until(req.request_id, self.finished_recving, "load")
        else:  # loads layer by layer in the step that computes the rest
            self.step(compute)
        # vLLM recomputes from the first block that failed to load.
        failed = [i for i in range(len(local), first) if ids[i] in self.load_errors]
        if is_async or failed:
            redo = failed[0] if failed else first
            self.step([(ids[i], seq.sequence_hashes[i]) for i in range(redo, full)])
        req.num_computed_tokens = req.num_tokens
        req.all_token_ids.append(7)  # the sampled token (no KV yet)
        delay, _ = self.sched.request_finished(req, ids)
        self.finished_ids.add(req.request_id)
        if delay:
            self._step_until(req.request_id, self.finished_sending, "save")
        self._release(seq, ids, full)
        return len(local), ext, ids

    def block(self, bid):
        """Engine block `bid` of every layer, as one tensor."""
        return torch.stack([t[:, bid] for t in self.kv.values()])
