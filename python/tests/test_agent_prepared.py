"""Prepared descriptor lists: Agent.prepare() once, Agent.request_prepared() by index."""
import pytest

import kvbm
from _peers import pattern

BLOCK = 4096


def blocks(storage, n):
    addr = storage.desc_list().descs[0][0]
    return kvbm.DescList(kvbm.MemType.DRAM, [(addr + i * BLOCK, BLOCK, 0) for i in range(n)])


def test_requests_by_index_and_stale_lists():
    a, b = kvbm.Agent("pa"), kvbm.Agent("pb")
    src = kvbm.SystemAllocator().allocate(8 * BLOCK)
    dst = kvbm.SystemAllocator().allocate(8 * BLOCK)
    src.view().numpy()[:] = pattern(8 * BLOCK, 3)
    a.register(src)
    b.register(dst)
    assert a.load_metadata(b.metadata()) == "pb"
    local, remote = a.prepare(blocks(src, 8), "pa"), a.prepare(blocks(dst, 8), "pb")
    assert (local.agent, remote.agent, len(local)) == ("pa", "pb", 8)
    a.request_prepared(kvbm.Op.WRITE, local, [1, 2], remote, [6, 0],
                       notification=b"done").wait(timeout=20)
    got, want = dst.view().numpy(), pattern(8 * BLOCK, 3)
    assert (got[6 * BLOCK:7 * BLOCK] == want[BLOCK:2 * BLOCK]).all()
    assert (got[0:BLOCK] == want[2 * BLOCK:3 * BLOCK]).all()
    assert b.wait_notification(timeout=20).message == b"done"
    with pytest.raises(kvbm.OutOfBoundsError, match="local index 8"):
        a.request_prepared(kvbm.Op.READ, local, [8], remote, [0])
    with pytest.raises(kvbm.InvalidArgumentError, match="1 local vs 2 remote"):
        a.request_prepared(kvbm.Op.READ, local, [0], remote, [0, 1])
    a.load_metadata(b.metadata())  # the peer's metadata replaced: the old list is stale
    with pytest.raises(kvbm.RemoteError, match="prepare the list again"):
        a.request_prepared(kvbm.Op.READ, local, [0], remote, [0])
