"""Which project files changed: the stat cache decides what to hash, `sha256sum` does the hashing.

A cache entry is trusted only when size, mtime_ns, inode and ctime all match. A file modified
within the same instant it was hashed could keep its mtime ("racy clean", as git calls it), so an
entry whose mtime is too close to the moment of hashing is stored but not trusted next time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from artefacts.hashing import hash_files
from majordomo.state import StatEntry

RACY_WINDOW_NS = 2_000_000_000


@dataclass
class ScanResult:
    digests: dict[str, str] = field(default_factory=dict)  # path -> digest of files that exist
    sizes: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    executable: set[str] = field(default_factory=set)  # mode bits are not in the digest; they matter
    hashed: list[str] = field(default_factory=list)  # paths whose bytes were read this time
    updates: list[tuple[str, StatEntry]] = field(default_factory=list)  # new stat cache entries
    # path -> (size, mtime_ns, ino, ctime_ns) of the file as it was when its digest was taken or trusted
    stats: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


def stat_entry(st: os.stat_result, digest: str) -> StatEntry:
    return StatEntry(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest)


def _trusted(entry: StatEntry | None, st: os.stat_result) -> bool:
    return (
        entry is not None
        and entry.size == st.st_size
        and entry.mtime_ns == st.st_mtime_ns
        and entry.ino == st.st_ino
        and entry.ctime_ns == st.st_ctime_ns
        and entry.digest != ""
    )


async def scan(root: Path, paths: Iterable[str], cache: dict[str, StatEntry]) -> ScanResult:
    """Digests of `paths` (project-relative), hashing only those the stat cache cannot vouch for."""
    result = ScanResult()
    to_hash: list[tuple[str, os.stat_result]] = []
    base = str(root) + os.sep  # string joins: pathlib costs ~2 us a path, 20 ms for a 10,000-file no-op
    for rel in paths:
        try:
            st = os.stat(base + rel)
        except (FileNotFoundError, NotADirectoryError):
            result.missing.append(rel)
            continue
        if st.st_mode & 0o111:
            result.executable.add(rel)
        result.stats[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        entry = cache.get(rel)
        if _trusted(entry, st):
            assert entry is not None
            result.digests[rel] = entry.digest
            result.sizes[rel] = st.st_size
        else:
            to_hash.append((rel, st))
    if to_hash:
        hashed_at = time.time_ns()
        digests = await hash_files([root / rel for rel, _ in to_hash])
        for (rel, st), digest in zip(to_hash, digests, strict=True):
            result.digests[rel] = digest
            result.sizes[rel] = st.st_size
            result.hashed.append(rel)
            racy = st.st_mtime_ns >= hashed_at - RACY_WINDOW_NS
            result.updates.append((rel, stat_entry(st, "" if racy else digest)))
    return result
