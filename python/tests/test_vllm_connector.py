"""kvbm.vllm.KvbmConnector through the replay harness (_vllm_harness.py): vLLM's call order,
torch CPU tensors as the paged KV (4 layers, block size 16)."""

import os
import random
import urllib.request
from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")

import kvbm  # noqa: E402
from kvbm.vllm import HAVE_VLLM, KvbmConnectorMetadata  # noqa: E402
from _vllm_harness import BLOCK, Engine, Request  # noqa: E402


def tokens(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(1, 50000) for _ in range(n)]


@pytest.fixture
def engines():
    made = []

    def make(*args, **kwargs):
        e = Engine(*args, **kwargs)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def test_metadata_is_vllms_type_when_vllm_imports():
    meta = KvbmConnectorMetadata()
    if HAVE_VLLM:  # pragma: no cover - not on the CI machine
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

        assert isinstance(meta, KVConnectorMetadata)
    assert meta.loads == [] and meta.saves == []


def test_multi_turn_loads_exactly_the_shared_blocks_byte_for_byte(engines):
    e = engines(160, g2_blocks=128)
    a = Request(tokens(64 * BLOCK, 1))
    assert e.sched.get_num_new_matched_tokens(a, 0) == (0, False)  # nothing saved yet
    _, ext_a, ids_a = e.run(a)
    assert ext_a == 0
    saved = {i: e.block(bid).clone() for i, bid in enumerate(ids_a[:48])}
    b = Request(a.prompt_token_ids[:48 * BLOCK] + tokens(100, 2))
    assert e.sched.get_num_new_matched_tokens(b, 0) == (768, False)
    assert e.sched.get_num_new_matched_tokens(b, 0) == (768, False)  # side-effect free
    _, ext_b, ids_b = e.run(b)
    assert ext_b == 768 and e.load_errors == set()
    assert set(ids_b[:48]).isdisjoint(ids_a[:48]) or True  # loads go wherever vLLM allocated
    for i in range(48):
        got = e.block(ids_b[i])
        assert torch.equal(got.view(torch.int16), saved[i].view(torch.int16)), f"block {i}"
    c = e.shared.manager.counters()
    assert c["g2_to_g1"]["blocks"] == 48 and c["tiers"]["G2"]["hit_tokens"] == 768
    assert c["g1_to_g2"]["blocks"] == 64 + (len(b.prompt_token_ids) // BLOCK - 48)
    stats = e.sched.get_kv_connector_stats()
    assert not stats.is_empty()
    assert stats.data["matched_tokens"] == 768 and stats.data["loaded_blocks"] == 48
    assert stats.data["load_failed_blocks"] == 0 and stats.data["pending_loads"] == 0


def test_another_salt_or_lora_matches_nothing(engines):
    e = engines(80, g2_blocks=64)
    base = tokens(32 * BLOCK, 3)
    e.run(Request(base))
    e.run(Request(base, cache_salt="tenant-a", lora=("sql", 1)))
    same = Request(base + [1])
    assert e.sched.get_num_new_matched_tokens(same, 0) == (32 * BLOCK, False)
    for other in (Request(base + [1], cache_salt="tenant-b"),
                  Request(base + [1], lora=("sql", 2)),
                  Request(base + [1], lora=("chat", 1)),
                  Request(base + [1], cache_salt="tenant-a", lora=("chat", 1)),
                  Request(base + [1], cache_salt="tenant-a")):
        assert e.sched.get_num_new_matched_tokens(other, 0) == (0, False), other.__dict__
    both = Request(base + [1], cache_salt="tenant-a", lora=("sql", 1))
    assert e.sched.get_num_new_matched_tokens(both, 0) == (32 * BLOCK, False)


def test_a_partial_tail_is_never_matched(engines):
    e = engines(80, g2_blocks=64)
    a = Request(tokens(8 * BLOCK + 15, 4))
    e.run(a)
    assert e.shared.manager.counters()["g1_to_g2"]["blocks"] == 8  # the tail was not saved
    again = Request(a.prompt_token_ids)  # the same 143 tokens: 8 blocks, never the tail
    assert e.sched.get_num_new_matched_tokens(again, 0) == (8 * BLOCK, False)
    longer = Request(a.prompt_token_ids + tokens(40, 5))
    assert e.sched.get_num_new_matched_tokens(longer, 0) == (8 * BLOCK, False)
    exact = Request(a.prompt_token_ids[:8 * BLOCK])  # one token must be left to compute
    assert e.sched.get_num_new_matched_tokens(exact, 0) == (7 * BLOCK, False)
    assert e.sched.get_num_new_matched_tokens(longer, 3 * BLOCK) == (5 * BLOCK, False)
    assert e.sched.get_num_new_matched_tokens(longer, 3 * BLOCK + 1) == (0, False)


def test_a_cut_disk_file_reports_load_errors_and_the_request_completes(engines, tmp_path):
    e = engines(80, g2_blocks=64, g3_blocks=64, disk_dir=str(tmp_path), disk_min_hits=1,
                load_async=True)
    a = Request(tokens(8 * BLOCK, 6))
    e.run(a)
    m = e.shared.manager
    m.flush()
    assert m.counters()["g2_to_g3"]["blocks"] == 8
    assert m.pool(kvbm.Tier.G2).clear_inactive() == 8  # on G3 only now
    for f in os.listdir(tmp_path):  # the files' bytes are gone (unlinking alone keeps the fd's)
        os.truncate(tmp_path / f, 0)
    b = Request(a.prompt_token_ids + tokens(20, 7))
    assert e.sched.get_num_new_matched_tokens(b, 0) == (8 * BLOCK, True)
    _, ext, ids = e.run(b)
    assert ext == 8 * BLOCK
    assert b.request_id in e.finished_recving  # completed through get_finished
    assert e.load_errors == set(ids[:8])
    assert m.counters()["g3_to_g1"]["failed_blocks"] == 8
    assert m.pool(kvbm.Tier.G3).counters()["removed"] == 8  # never served from there again
    assert e.shared.stats.snapshot()["load_failed_blocks"] == 8


def test_a_request_aborted_while_loading_keeps_its_blocks_until_the_load_is_done(engines):
    e = engines(80, g2_blocks=64, load_async=True)
    a = Request(tokens(8 * BLOCK, 11))
    e.run(a)
    b = Request(a.prompt_token_ids + [5])
    assert e.sched.get_num_new_matched_tokens(b, 0) == (8 * BLOCK, True)
    ids = list(range(40, 49))
    e.sched.update_state_after_alloc(b, ids, 8 * BLOCK)
    # Aborted before its load ran: nothing computed, but the load will write its blocks.
    assert e.sched.request_finished(b, ids) == (True, None)
    e.finished_ids.add(b.request_id)
    e.step()  # the load starts; the blocks go back only once it is done
    assert b.request_id not in e.finished_sending or b.request_id in e.finished_recving
    if b.request_id not in e.finished_sending:
        e.worker._worker.drain()
        e.step()
    assert b.request_id in e.finished_recving and b.request_id in e.finished_sending


class ReferenceLru:
    """kvbm's G2 as the connector drives it: a load touches its blocks in order when it
    finishes; a save inserts the missing blocks in order, evicting least recently used."""

    def __init__(self, capacity):
        self.cap, self.lru, self.evictions = capacity, OrderedDict(), 0

    def prefix(self, hashes):
        n = 0
        while n < len(hashes) and hashes[n] in self.lru:
            n += 1
        return n

    def touch(self, hashes):
        for h in hashes:
            self.lru.move_to_end(h)

    def save(self, hashes):
        new = [h for h in dict.fromkeys(hashes) if h not in self.lru][:self.cap]
        over = len(self.lru) + len(new) - self.cap
        for _ in range(max(0, over)):
            self.lru.popitem(last=False)
            self.evictions += 1
        for h in new:
            self.lru[h] = True
        return len(new)


def metric(families, name, **labels):
    for f in families:
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name} {labels}")


def test_pressure_agrees_with_a_reference_lru_and_the_exported_metrics(engines):
    parser = pytest.importorskip("prometheus_client.parser")
    # Both smaller than the working set (6 prompts of 6-8 blocks and a tail): G1 holds about
    # one prompt, G2 about four.
    g1, g2 = 10, 28
    e = engines(g1, prefix_cache=True, g2_blocks=g2, metrics_port=0)
    prompts = [tokens(random.Random(p).randrange(6, 9) * BLOCK + 5, 100 + p) for p in range(6)]
    ref = ReferenceLru(g2)
    rng = random.Random(8)
    expect = dict(matched=0, saved=0, loads=0, saves=0)
    for turn in range(40):
        req = Request(prompts[rng.randrange(len(prompts))])
        seq = e.sched._scheduler.sequence(req)
        hashes = seq.sequence_hashes
        limit = (req.num_tokens - 1) // BLOCK
        full = req.num_tokens // BLOCK
        local, ext, _ = e.run(req)
        want = ref.prefix(hashes[local:limit])
        assert ext == want * BLOCK, f"turn {turn}: {ext} tokens, reference {want * BLOCK}"
        ref.touch(hashes[local:local + want])
        expect["matched"] += ext
        expect["loads"] += 1 if want else 0
        expect["saved"] += ref.save(hashes[:full])
        expect["saves"] += 1
    assert e.load_errors == set()
    assert expect["matched"] > 0 and ref.evictions > 0  # the pressure did both
    c = e.shared.manager.counters()
    assert c["tiers"]["G2"]["evictions"] == ref.evictions
    # The exporter, scraped over HTTP, parsed with prometheus_client's parser.
    port = e.shared.metrics_server.port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    fam = list(parser.text_string_to_metric_families(text))
    blocks = expect["matched"] // BLOCK
    assert metric(fam, "kvbm_vllm_matched_tokens_total") == expect["matched"]
    assert metric(fam, "kvbm_hit_blocks_total", tier="G2") == blocks
    assert metric(fam, "kvbm_hit_tokens_total", tier="G2") == expect["matched"]
    assert metric(fam, "kvbm_vllm_loaded_blocks_total") == blocks
    assert metric(fam, "kvbm_vllm_load_requests_total") == expect["loads"]
    assert metric(fam, "kvbm_moved_blocks_total", direction="g2_to_g1") == blocks
    assert metric(fam, "kvbm_moved_bytes_total", direction="g2_to_g1") == (
        blocks * e.shared.manager.layout(kvbm.Tier.G2).config.replace(num_blocks=1).block_bytes)
    assert metric(fam, "kvbm_moved_blocks_total", direction="g1_to_g2") == expect["saved"]
    assert metric(fam, "kvbm_vllm_saved_blocks_total") == expect["saved"]
    assert metric(fam, "kvbm_vllm_save_requests_total") == expect["saves"]
    assert metric(fam, "kvbm_evictions_total", tier="G2") == ref.evictions
    assert metric(fam, "kvbm_failed_blocks_total", direction="g3_to_g1") == 0
    assert metric(fam, "kvbm_vllm_load_failed_blocks_total") == 0
    assert metric(fam, "kvbm_pool_blocks", tier="G2", state="registered") == len(ref.lru)
    assert metric(fam, "kvbm_offload_queue_depth") == 0
    assert metric(fam, "kvbm_vllm_pending_saves") == 0
    assert metric(fam, "kvbm_lookups_total") == expect["loads"]


def _fd_state():
    """Every open fd's target and file position, and this process's read/write syscall
    counts (/proc/self/io counts the threads of the whole process)."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as f:
                pos = f.readline()
        except OSError:
            continue  # the listing's own fd, gone already
        fds[fd] = (target, pos)
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    return fds, int(io["syscr"]), int(io["syscw"])


def _delta(before, after):
    return after[1] - before[1], after[2] - before[2]


def test_scheduler_side_calls_touch_no_file_descriptor(engines, tmp_path):
    e = engines(200, g2_blocks=64, g3_blocks=64, disk_dir=str(tmp_path), disk_min_hits=1)
    prompt = tokens(40 * BLOCK, 9)
    e.run(Request(prompt))
    e.shared.manager.flush()
    e.shared.manager.pool(kvbm.Tier.G2).clear_inactive()  # the match is on G3: a disk file
    e.step()  # quiet: nothing pending
    counters = e.shared.manager.counters()
    # What taking the snapshot itself costs (its opens and reads), measured the same way.
    probe = _delta(_fd_state(), _fd_state())
    before = _fd_state()
    req = Request(prompt + tokens(30, 10))
    for _ in range(20):
        assert e.sched.get_num_new_matched_tokens(req, 0) == (40 * BLOCK, False)
    e.sched.update_state_after_alloc(req, list(range(43)), 40 * BLOCK)
    meta = e.sched.build_connector_meta(None)
    req.num_computed_tokens = req.num_tokens
    assert e.sched.request_finished(req, list(range(43)))[0]
    after = _fd_state()
    assert after[0] == before[0]  # no fd opened, closed or moved
    assert _delta(before, after) == probe  # no read or write beyond the probe's own
    assert e.shared.manager.counters() == counters  # no lookup, move or hit counted
    assert len(meta.loads) == 1 and meta.loads[0].block_ids == list(range(40))
