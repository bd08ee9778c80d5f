"""Store eviction picks least recently used entries, never one a task dir links."""

from __future__ import annotations

import os
from pathlib import Path

from artefacts.hashing import hash_bytes
from artefacts.store import Store


def _put(store: Store, data: bytes) -> str:
    digest = hash_bytes(data)
    temp = store.new_temp()
    temp.write_bytes(data)
    store.commit(temp, digest)
    return digest


def test_lru_eviction_spares_linked_entries(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digests = [_put(store, bytes([n]) * 1000) for n in range(5)]  # 5,000 bytes in all
    for age, digest in enumerate(digests):  # digests[0] is the least recently used
        os.utime(store.path_for(digest), ns=(1_000_000_000 * (age + 1), 1_000_000_000))
    store.link_into(digests[0], tmp_path / "task" / "in.bin")  # a running step holds the oldest
    store.touch(digests[1])  # just used: now the most recent

    assert store.eviction_candidates(high_water_bytes=6000, low_water_bytes=3000) == []  # under the mark
    chosen = [d for d, _ in store.eviction_candidates(high_water_bytes=4000, low_water_bytes=3000)]
    assert chosen == [digests[2], digests[3]]  # oldest unlinked first, down to the low-water mark
    for digest in chosen:
        store.delete(digest)
    assert not store.has(digests[2]) and store.has(digests[0]) and store.has(digests[1])
    assert (tmp_path / "task" / "in.bin").read_bytes() == bytes([0]) * 1000


def test_entries_shared_with_a_peer_store_are_evictable_unless_in_use(tmp_path: Path) -> None:
    """Same-host stores share inodes (artefacts.samehost): a peer's link must not pin an entry forever;
    what running steps use (the cook says) is what is spared."""
    store, peer = Store(tmp_path / "store"), Store(tmp_path / "peer")
    digests = [_put(store, bytes([n]) * 1000) for n in range(3)]
    for age, digest in enumerate(digests):
        os.utime(store.path_for(digest), ns=(1_000_000_000 * (age + 1), 1_000_000_000))
        peer.path_for(digest).parent.mkdir(parents=True, exist_ok=True)
        os.link(store.path_for(digest), peer.path_for(digest))  # every entry now has two links
    assert store.eviction_candidates(2000, 1000) == []  # by link count, nothing could ever go
    chosen = [d for d, _ in store.eviction_candidates(2000, 1000, in_use={digests[0]})]
    assert chosen == [digests[1], digests[2]]  # oldest first, sparing the one a running step uses
    store.delete(digests[1])
    assert peer.has(digests[1]) and peer.path_for(digests[1]).stat().st_mode & 0o777 == 0o444
