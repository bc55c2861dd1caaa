#!/usr/bin/python3
"""A remote read between two processes:
  A (prefill) allocates a KV layout, fills it, registers it with its agent, listens on
    its metadata side channel and publishes the layout's description there;
  B (decode), told only A's host, port and the key, fetches A's metadata and the layout,
    READs blocks straight from A's memory into its own layout through the transfer
    engine, checks them, and the notification tells A that B has them.

Run: PYTHONPATH=build/default/python /usr/bin/python3 examples/python/remote_read.py
(exit status 0 when every block matched)
"""

import multiprocessing
import sys

import numpy as np

import kvbm

CONFIG = dict(num_blocks=64, num_layers=2, outer_dim=2, page_size=16, inner_dim=512,
              dtype_bytes=2)


def expected(blocks):
    return (np.arange(blocks * 2 * 2 * 16 * 512, dtype=np.int32) % 32749).astype(np.int16)


def decode(host: str, port: int, key: str) -> None:
    agent = kvbm.Agent("decode")
    agent.fetch_metadata(host, port)  # A's agent: its backends and registered memory
    remote = kvbm.Layout.from_bytes(agent.fetch(host, port, key))
    local = kvbm.Layout.allocate(remote.config, kvbm.SystemAllocator())
    agent.register(local)
    engine = kvbm.TransferEngine()
    # READ A's blocks 0..31 into ours 32..63; A hears about it once they are here.
    t = engine.copy(remote, range(32), local, range(32, 64), agent=agent,
                    notification=b"decode has blocks 0..31")
    t.wait(timeout=60)
    got = local.view().numpy()[32:].reshape(-1)
    same = np.array_equal(got, expected(32))
    print(f"B: read {t.bytes >> 20} MiB from agent '{remote.remote_agent}' ({t.path.name} "
          f"path): {'every byte matches' if same else 'MISMATCH'}")
    sys.exit(0 if same else 1)


def main() -> int:
    agent = kvbm.Agent("prefill")
    config = kvbm.LayoutConfig(**CONFIG)
    # Shareable memory: a peer on this host maps it and copies with plain loads.
    blocks = kvbm.Layout.allocate(config, kvbm.SystemAllocator(shareable=True))
    blocks.view().numpy()[:] = expected(64).reshape(blocks.view().shape)
    agent.register(blocks)
    port = agent.listen("127.0.0.1", 0)
    agent.publish("prefill/kv", blocks.to_bytes())
    print(f"A: listening on 127.0.0.1:{port}, layout published under 'prefill/kv'")

    b = multiprocessing.get_context("spawn").Process(target=decode,
                                                      args=("127.0.0.1", port, "prefill/kv"))
    b.start()
    try:
        n = agent.wait_notification(timeout=60, peer="decode")
        print(f"A: notified by '{n.agent}': {n.message.decode()}")
    finally:
        b.join(60)
    return b.exitcode


if __name__ == "__main__":
    sys.exit(main())
