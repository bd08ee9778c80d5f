"""The content store on a real filesystem: commit, ingest, link_into, recover."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import put

from artefacts.hashing import HashError, hash_bytes
from artefacts.store import Store
from protocol.digests import store_relpath


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")



def test_commit_layout_and_read_only(store: Store) -> None:
    digest = put(store, b"hello")
    hexdigest = sha256_hex(b"hello")
    entry = store.root / "sha256" / hexdigest[:2] / hexdigest[2:4] / hexdigest
    assert store.path_for(digest) == entry == store.root / store_relpath(digest)
    assert store.has(digest)
    assert entry.read_bytes() == b"hello"
    assert mode(entry) == 0o444
    assert list(store.tmp.iterdir()) == []
    assert store.size_bytes() == 5
    assert not store.has(hash_bytes(b"other"))


def test_commit_of_present_digest_drops_temp_and_keeps_entry(store: Store) -> None:
    digest = put(store, b"same")
    inode = os.stat(store.path_for(digest)).st_ino
    assert store.path_for(digest) == store.commit(_temp_with(store, b"same"), digest)
    assert os.stat(store.path_for(digest)).st_ino == inode
    assert list(store.tmp.iterdir()) == []
    assert store.size_bytes() == 4


def _temp_with(store: Store, data: bytes) -> Path:
    temp = store.new_temp()
    temp.write_bytes(data)
    return temp


def test_symlink_in_store_is_not_an_entry(store: Store, tmp_path: Path) -> None:
    digest = hash_bytes(b"planted")
    (tmp_path / "elsewhere").write_bytes(b"planted")
    store.path_for(digest).parent.mkdir(parents=True)
    store.path_for(digest).symlink_to(tmp_path / "elsewhere")
    assert not store.has(digest)
    put(store, b"planted")  # a real commit replaces the planted link
    assert store.has(digest) and mode(store.path_for(digest)) == 0o444


def test_new_temp_is_unique_and_in_tmp(store: Store) -> None:
    temps = {store.new_temp() for _ in range(1000)}
    assert len(temps) == 1000
    assert all(temp.parent == store.tmp for temp in temps)


def test_link_into_is_a_hardlink(store: Store, tmp_path: Path) -> None:
    digest = put(store, b"input bytes")
    dest = tmp_path / "task" / "deep" / "in.txt"
    store.link_into(digest, dest)
    assert os.stat(dest).st_ino == os.stat(store.path_for(digest)).st_ino
    assert mode(dest) == 0o444


@pytest.mark.parametrize("code", [errno.EMLINK, errno.EXDEV, errno.EPERM])
def test_link_into_falls_back_to_a_read_only_copy(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    digest = put(store, b"x" * 100_000)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refuse)
    dest = tmp_path / "task" / "in.bin"
    store.link_into(digest, dest)
    assert os.stat(dest).st_ino != os.stat(store.path_for(digest)).st_ino
    assert dest.read_bytes() == b"x" * 100_000
    assert mode(dest) == 0o444


def test_link_into_other_errors_and_missing_digest(store: Store, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not in the store"):
        store.link_into(hash_bytes(b"absent"), tmp_path / "a")
    digest = put(store, b"present")
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(FileExistsError):
        store.link_into(digest, tmp_path / "taken")


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "src"
    directory.mkdir()
    paths = []
    for index in range(300):
        path = directory / f"s{index}"
        path.write_bytes(os.urandom(index * 37))
        paths.append(path)
    big = directory / "big"
    big.write_bytes(os.urandom(3 << 20))
    return [*paths, big, paths[5]]


async def test_ingest_copies_under_correct_digests(store: Store, sources: list[Path]) -> None:
    before = [path.read_bytes() for path in sources]
    results = await store.ingest(sources)
    assert results == [("sha256:" + sha256_hex(data), len(data)) for data in before]
    for source, (digest, _size) in zip(sources, results, strict=True):
        entry = store.path_for(digest)
        assert mode(entry) == 0o444
        assert os.stat(entry).st_ino != os.stat(source).st_ino, "a source is never aliased"
    assert list(store.tmp.iterdir()) == []


async def test_ingest_blake3_store(tmp_path: Path, sources: list[Path]) -> None:
    store = Store(tmp_path / "b3", algo="blake3")
    results = await store.ingest(sources[:20])
    assert [digest for digest, _ in results] == [hash_bytes(path.read_bytes(), "blake3") for path in sources[:20]]
    assert all(store.has(digest) for digest, _ in results)


async def test_ingest_of_missing_source_names_it_and_leaves_no_temps(store: Store, sources: list[Path]) -> None:
    missing = sources[0].parent / "missing"
    with pytest.raises(FileNotFoundError) as caught:
        await store.ingest([*sources[:10], missing])
    assert caught.value.filename == str(missing)
    assert list(store.tmp.iterdir()) == []


async def test_ingest_of_a_pseudo_file(store: Store) -> None:
    """procfs files claim size 0 and refuse copy_file_range; the read/write fallback still stores their bytes."""
    source = Path("/proc/self/stat")
    [(digest, size)] = await store.ingest([source])
    stored = store.path_for(digest).read_bytes()
    assert size == len(stored) > 0
    assert digest == hash_bytes(stored)
    assert stored.split(b" ", 1)[0] == str(os.getpid()).encode()


def _rewrite_until(path: Path, stop: threading.Event) -> int:
    """Rewrite `path` in place with alternating patterns until told to stop; returns rewrites done."""
    rounds = 0
    patterns = [b"A" * (4 << 20), b"B" * (3 << 20)]
    with open(path, "r+b", buffering=0) as file:
        while not stop.is_set() and rounds < 100_000:
            file.seek(0)
            file.write(patterns[rounds % 2])
            file.truncate()
            rounds += 1
    return rounds


async def test_ingest_of_a_file_being_rewritten(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "hot"
    source.write_bytes(b"A" * (4 << 20))
    stop = threading.Event()
    writer = asyncio.create_task(asyncio.to_thread(_rewrite_until, source, stop))
    try:
        results = [result for _ in range(20) for result in await store.ingest([source])]
    finally:
        stop.set()
        rounds = await writer
    assert rounds > 0
    for digest, size in results:
        stored = store.path_for(digest).read_bytes()
        assert digest == hash_bytes(stored), "an entry is filed under the digest of its own bytes"
        assert size == len(stored)


async def test_ingest_outputs_moves_by_link(store: Store, tmp_path: Path) -> None:
    task = tmp_path / "task"
    task.mkdir()
    out = task / "out.o"
    out.write_bytes(b"object code")
    [(digest, size)] = await store.ingest_outputs([out])
    assert (digest, size) == (hash_bytes(b"object code"), 11)
    assert os.stat(out).st_ino == os.stat(store.path_for(digest)).st_ino, "no copy was made"
    assert mode(store.path_for(digest)) == 0o444
    assert list(store.tmp.iterdir()) == []


async def test_ingest_outputs_copies_multiply_linked_and_refuses_symlinks(store: Store, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.write_bytes(b"writable elsewhere")
    os.link(shared, tmp_path / "other-name")
    [(digest, _)] = await store.ingest_outputs([shared])
    assert os.stat(store.path_for(digest)).st_ino != os.stat(shared).st_ino
    assert mode(shared) == 0o644 & ~_umask()

    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(HashError, match="not a regular file") as caught:
        await store.ingest_outputs([link])
    assert caught.value.path == link
    assert list(store.tmp.iterdir()) == []


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_recover_removes_leftovers_of_dead_writers(store: Store) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as alive:
        try:
            leftovers = {
                "dead": store.tmp / f"{dead.pid}-0123456789abcdef",
                "own": store.tmp / f"{os.getpid()}-0123456789abcdef",
                "alive": store.tmp / f"{alive.pid}-0123456789abcdef",
                "junk": store.tmp / "junk",
            }
            for path in leftovers.values():
                path.write_bytes(b"partial")
            (store.tmp / "a-dir").mkdir()
            (store.tmp / "a-dir" / "f").write_bytes(b"")
            digest = put(store, b"kept")
            store.recover()
            assert sorted(store.tmp.iterdir()) == [leftovers["alive"]]
            assert store.has(digest)
        finally:
            assert alive.stdin is not None
            alive.stdin.close()


def test_size_is_counted_not_walked_after_the_first_time(store: Store) -> None:
    """A chef's heartbeat and eviction check read the size: O(1) from the store's own count of its
    adds and deletes; only a recount walks (and sees what another process sharing the store added)."""
    first = put(store, b"12345")
    assert store.size_bytes() == 5  # the first call walks
    second = put(store, b"678")
    put(store, b"678")  # already there: no bytes added
    assert store.size_bytes() == 8
    store.delete(first)
    store.delete(first)  # gone already: nothing subtracted twice
    assert store.size_bytes() == 3
    store.quarantine(second)
    assert store.size_bytes() == 0
    put(Store(store.root), b"abc")  # another process's store object, same root
    assert store.size_bytes() == 0
    assert store.size_bytes(recount=True) == 3
    assert store.eviction_candidates(high_water_bytes=2, low_water_bytes=0, in_use=()) != []
