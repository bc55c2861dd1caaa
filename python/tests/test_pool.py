"""The block manager: token hashes and sequences, allocate/register, offload, match,
onboard (bytes checked through numpy views), failing closed, events and counters."""

import gc
import os

import numpy as np
import pytest

import kvbm

G1, G2, G3 = kvbm.Tier.G1, kvbm.Tier.G2, kvbm.Tier.G3
STORED, REMOVED = kvbm.EventKind.STORED, kvbm.EventKind.REMOVED
# 2 layers x K/V x 4 tokens x 64 x 2 bytes: 2 KiB blocks of 4 tokens.
BLOCK = kvbm.LayoutConfig(num_blocks=1, num_layers=2, page_size=4, inner_dim=64)
BLOCK_BYTES = 2048


def test_golden_constants_of_dynamo():
    # Dynamo's KVBM test constants: seed (salt hash) 1337, block size 4, tokens 1..12.
    seq = kvbm.TokenSequence(4, range(1, 13), salt_hash=1337)
    assert seq.block_hashes == [14643705804678351452, 16777012769546811212, 483935686894639516]
    assert seq.sequence_hashes == [14643705804678351452, 4945711292740353085,
                                   12583592247330656132]
    assert kvbm.block_hash([1, 2, 3, 4], salt_hash=1337) == 14643705804678351452
    assert kvbm.block_hash(np.arange(5, 9, dtype=np.uint32), 1337) == 16777012769546811212
    assert kvbm.sequence_hash(4945711292740353085, 483935686894639516,
                              salt_hash=1337) == 12583592247330656132
    assert seq.block(0).parent_hash is None
    assert seq.block(2) == kvbm.SequenceBlock(483935686894639516, 12583592247330656132,
                                              4945711292740353085)
    assert kvbm.salt_hash(b"") == 0
    assert kvbm.TokenSequence(4, salt="lora-7").salt_hash == kvbm.salt_hash("lora-7") != 0


def test_token_sequence_appends_truncates_and_refuses_bad_input():
    seq = kvbm.TokenSequence(4)
    assert seq.extend(np.arange(10)) == 2  # int64 numpy: read as a buffer
    assert len(seq) == 10 and seq.num_blocks == 2 and seq.tail == [8, 9]
    assert seq.append(10) == 0 and seq.append(11) == 1 and seq.num_blocks == 3
    assert seq.tokens == list(range(12))
    assert seq.sequence_hashes == kvbm.TokenSequence(4, list(range(12))).sequence_hashes
    assert [b.sequence_hash for b in seq.blocks] == seq.sequence_hashes
    seq.truncate(5)
    assert seq.num_blocks == 1 and seq.tail == [4]
    with pytest.raises(kvbm.OutOfBoundsError, match="1"):
        seq.block(1)
    with pytest.raises(kvbm.InvalidArgumentError, match="99"):
        seq.truncate(99)
    with pytest.raises(ValueError, match="block_size"):
        kvbm.TokenSequence(0)
    with pytest.raises(ValueError, match=r"tokens\[1\] is -1"):
        seq.extend([0, -1])
    with pytest.raises(ValueError, match=r"tokens\[0\] is 4294967296"):
        seq.extend([2**32])
    with pytest.raises(ValueError, match=r"tokens\[2\] is negative"):
        seq.extend(np.array([1, 2, -3]))
    with pytest.raises(TypeError, match="tokens"):
        seq.extend("abc")
    with pytest.raises(ValueError, match="not both"):
        kvbm.TokenSequence(4, salt="a", salt_hash=1)
    assert len(seq) == 5  # nothing appended by a refused call


def make_manager(tmp_path, **offload):
    config = kvbm.BlockManagerConfig(
        BLOCK, g1_blocks=8, g2_blocks=8, g3_blocks=16, disk_dir=tmp_path, use_gpu=False,
        offload=kvbm.OffloadOptions(disk_min_hits=1, **offload),
        engine=kvbm.TransferEngineOptions(host_threads=2))
    return kvbm.BlockManager(config, events=True)


def fill_and_register(m, seq):
    """Registers seq's blocks on G1, each filled through a numpy view with random bytes;
    returns the registered handles and the bytes."""
    g1 = m.layout(G1, dtype="uint8")
    want = np.random.default_rng(7).integers(0, 256, (seq.num_blocks, BLOCK_BYTES), np.uint8)
    blocks = m.allocate(seq.num_blocks)
    regs = []
    for i, b in enumerate(blocks):
        assert b.state == kvbm.BlockState.RESET and b.tier == G1
        b.begin_fill()
        g1.block(b.block_id).numpy().reshape(-1)[:] = want[i]
        b.complete(seq.block(i))
        assert b.state == kvbm.BlockState.COMPLETE and b.key == seq.block(i)
        regs.append(m.register(b))
        assert b.empty
    assert [r.sequence_hash for r in regs] == seq.sequence_hashes
    return regs, want


def offload_then_drop(m, seq, g2_keep):
    """Offloads seq's 8 blocks to G2 and G3, then drops G1's (scribbling over their bytes)
    and G2's from block g2_keep on."""
    regs, want = fill_and_register(m, seq)
    m.flush(timeout=60)
    c = m.counters()
    assert c["g1_to_g2"] == {"blocks": 8, "bytes": 8 * BLOCK_BYTES, "failed_blocks": 0}
    assert c["g2_to_g3"] == {"blocks": 8, "bytes": 8 * BLOCK_BYTES, "failed_blocks": 0}
    assert c["queued_offloads"] == 0 and c["dropped_offloads"] == 0
    del regs
    assert m.pool(G1).clear_inactive() == 8
    m.layout(G1, dtype="uint8").view().numpy()[:] = 0xEE
    on_g2 = m.match(seq.sequence_hashes)
    assert len(on_g2) == 8 and len(on_g2.g2) == 8
    for b in on_g2.g2[g2_keep:]:
        m.pool(G2).remove(b)
    on_g2.release()
    return want


def test_offload_drop_match_onboard_bytes_equal(tmp_path):
    m = make_manager(tmp_path)
    assert m.tiers == [G1, G2, G3] and m.block_size == 4
    seq = kvbm.TokenSequence(4, range(100, 132), salt="req")
    want = offload_then_drop(m, seq, g2_keep=4)

    match = m.match(seq.sequence_hashes)
    assert (len(match.g1), len(match.g2), len(match.g3)) == (0, 4, 4)
    assert [b.tier for b in match.g3] == [G3] * 4
    result = m.onboard(match)
    assert result.ok and result.failed == [] and result.error is None
    assert len(match) == 0
    assert [b.sequence_hash for b in result.blocks] == seq.sequence_hashes
    g1 = m.layout(G1, dtype="uint8")
    for i, b in enumerate(result.blocks):
        assert b.tier == G1
        assert np.array_equal(g1.block(b.block_id).numpy().reshape(-1), want[i]), f"block {i}"

    c = m.counters()
    assert c["lookups"] == 2
    assert c["g2_to_g1"] == {"blocks": 4, "bytes": 4 * BLOCK_BYTES, "failed_blocks": 0}
    assert c["g3_to_g1"] == {"blocks": 4, "bytes": 4 * BLOCK_BYTES, "failed_blocks": 0}
    assert (c["tiers"]["G2"]["hit_blocks"], c["tiers"]["G2"]["hit_tokens"]) == (4, 16)
    assert (c["tiers"]["G3"]["hit_blocks"], c["tiers"]["G3"]["hit_tokens"]) == (4, 16)
    assert c["tiers"]["G1"]["registered_blocks"] == 8 and c["tiers"]["G1"]["active_blocks"] == 8
    assert c["tiers"]["G2"]["removed"] == 4 and c["tiers"]["G3"]["stored"] == 8

    events = m.events()
    count = {(k, t): sum(e.kind == k and e.tier == t for e in events)
             for k in (STORED, REMOVED) for t in (G1, G2, G3)}
    assert count == {(STORED, G1): 16, (REMOVED, G1): 8, (STORED, G2): 8, (REMOVED, G2): 4,
                     (STORED, G3): 8, (REMOVED, G3): 0}
    first = next(e for e in events if e.tier == G3)
    assert first.sequence_hash == seq.sequence_hashes[0] and first.parent_hash is None
    assert m.events() == []  # drained
    again = m.match(seq.sequence_hashes)
    assert len(again.g1) == 8


def test_onboard_fails_closed_naming_the_blocks(tmp_path):
    m = make_manager(tmp_path)
    seq = kvbm.TokenSequence(4, range(32))
    want = offload_then_drop(m, seq, g2_keep=4)  # blocks 4..7 are on G3 only
    (g3_file,) = os.listdir(tmp_path)
    os.truncate(tmp_path / g3_file, 0)
    m.events()

    match = m.match(seq.sequence_hashes)
    assert (len(match.g2), len(match.g3)) == (4, 4)
    result = m.onboard(match)
    assert not result.ok
    assert result.failed == seq.sequence_hashes[4:]
    assert isinstance(result.error, kvbm.IoError) and result.error.message
    assert len(result.blocks) == 4  # the G2 part arrived; no failed block is served
    g1 = m.layout(G1, dtype="uint8")
    for i, b in enumerate(result.blocks):
        assert np.array_equal(g1.block(b.block_id).numpy().reshape(-1), want[i])
    assert not any(m.pool(G3).contains(h) for h in seq.sequence_hashes[4:])
    assert [e.kind for e in m.events() if e.tier == G3] == [REMOVED] * 4
    c = m.counters()
    assert c["g3_to_g1"] == {"blocks": 0, "bytes": 0, "failed_blocks": 4}
    assert c["tiers"]["G3"]["hit_blocks"] == 0
    again = m.match(seq.sequence_hashes)
    assert (len(again.g1), len(again.g2) + len(again.g3)) == (4, 0)


def test_lifecycle_dedup_and_errors(tmp_path):
    m = kvbm.BlockManager(kvbm.BlockManagerConfig(BLOCK, g1_blocks=4, use_gpu=False))
    assert m.tiers == [G1] and not m.has_tier(G3)
    seq = kvbm.TokenSequence(4, range(8))
    a, b = m.allocate(2)
    with pytest.raises(kvbm.InvalidArgumentError, match="not Complete"):
        m.register(a)
    a.begin_fill()
    with pytest.raises(kvbm.InvalidArgumentError, match="not Reset"):
        a.begin_fill()
    a.complete(seq.block(0))
    b.begin_fill()
    b.complete(seq.block(0))
    first = m.register(a)
    dup = m.register(b)  # the same hash: the registered block, b's space freed
    assert dup.block_id == first.block_id and b.empty
    pool = m.pool(G1).counters()
    assert (pool["dedups"], pool["registered_blocks"], pool["free_blocks"]) == (1, 1, 3)
    with pytest.raises(ValueError, match="empty"):
        b.block_id
    with pytest.raises(kvbm.InvalidArgumentError, match="empty"):
        b.begin_fill()
    with pytest.raises(kvbm.AllocationFailedError, match="5"):
        m.allocate(5)
    with pytest.raises(ValueError, match="no G3 tier"):
        m.layout(G3)
    with pytest.raises(ValueError, match="events=True"):
        m.events()
    with pytest.raises(ValueError, match=r"sequence_hashes\[0\] is -1"):
        m.match([-1])
    assert len(m.match(np.array(seq.sequence_hashes, dtype=np.uint64))) == 1
    first.release()
    dup.release()
    assert m.pool(G1).counters()["inactive_blocks"] == 1
    with pytest.raises(kvbm.InvalidArgumentError, match="g1_blocks"):
        kvbm.BlockManager(kvbm.BlockManagerConfig(BLOCK, use_gpu=False))  # no G1 blocks


def test_config_environment_overrides(monkeypatch, tmp_path):
    config = kvbm.BlockManagerConfig(BLOCK, g1_blocks=4, g2_blocks=1, disk_dir=tmp_path)
    assert config.block_bytes == BLOCK_BYTES and config.disk_dir == str(tmp_path)
    monkeypatch.delenv("KVBM_CPU_CACHE_GB", raising=False)
    monkeypatch.setenv("KVBM_DISK_CACHE_GB", "0.5")
    config.apply_env_overrides()
    assert (config.g2_blocks, config.g3_blocks) == (1, (1 << 29) // BLOCK_BYTES)
    monkeypatch.setenv("KVBM_CPU_CACHE_GB", "lots")
    with pytest.raises(kvbm.InvalidArgumentError, match="KVBM_CPU_CACHE_GB='lots'"):
        config.apply_env_overrides()
    config.offload.g1_to_g3_bypass = True
    config.offload.hit_decay_period = 0.25
    assert config.offload.g1_to_g3_bypass and config.offload.hit_decay_period == 0.25
    with pytest.raises(ValueError, match="hit_decay_period"):
        config.offload.hit_decay_period = -1


def test_views_keep_the_manager_alive():
    m = kvbm.BlockManager(kvbm.BlockManagerConfig(BLOCK, g1_blocks=2, use_gpu=False))
    view = m.layout(G1, dtype="float16").block(1).numpy()
    (block,) = m.allocate(1)
    del m
    gc.collect()
    view[:] = 1.5  # the G1 memory is still there, and so is the pool the handle points into
    assert (view == 1.5).all() and block.tier == G1
    block.release()
    assert block.empty
