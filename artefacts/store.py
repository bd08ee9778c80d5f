"""The content-addressed store: read-only files named by digest, `<root>/<algo>/<ab>/<cd>/<hex>`.

An entry is only ever created by renaming a finished, fsynced, mode-0444 file into place, and only
under the digest of the bytes in that file; an entry that exists is therefore complete and
verified. `<root>/tmp/` holds files on their way in; it is on the same filesystem, so the final
rename is atomic.

Sync methods touch the disk: async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from artefacts.hashing import HashError, hash_files, hash_files_here
from artefacts.lifeline import pid_alive
from protocol.digests import ALGORITHMS, DEFAULT_ALGORITHM, parse_digest, store_relpath

READ_ONLY = 0o444
COPY_CHUNK_BYTES = 1 << 30
# Errors after which a hardlink is replaced by a copy: other filesystem, link-count limit,
# filesystem or policy that forbids links (e.g. protected_hardlinks, some FUSE/SMB mounts).
LINK_FALLBACK_ERRNOS = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM})
# Errors after which copy_file_range is replaced by read/write (old kernels, odd filesystems).
COPY_RANGE_FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EIO}
)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Store:
    """A pod's content store rooted at `root`; new entries are named with `algo` digests.

    Lookups accept any known algorithm (the algorithm is part of the layout), so one store can
    serve digests named either way; `ingest` and `ingest_outputs` name what they add with `algo`.
    """

    def __init__(self, root: Path, algo: str = DEFAULT_ALGORITHM, *, jobs: int | None = None) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown digest algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")
        self.root = Path(root)
        self.algo = algo
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.tmp = self.root / "tmp"
        self._prefix = str(self.root) + os.sep
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Bytes of all entries, kept up to date by this process's own adds and deletes once a walk
        # has counted them (None: not yet): a heartbeat or an eviction check costs O(1), not a
        # walk of every entry. Commits run in several threads, hence the lock.
        self._bytes: int | None = None
        self._bytes_lock = threading.Lock()

    # --- lookups -------------------------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        return self.root / store_relpath(digest)

    def entry(self, digest: str) -> str:
        """`path_for` as a string, for per-input loops (pathlib costs ~10 us a call)."""
        return self._prefix + store_relpath(digest)

    def has(self, digest: str) -> bool:
        """True when the entry is a regular file (a symlink planted in the store does not count)."""
        try:
            # A string join: pathlib costs ~10 us a call, and a chef asks twice per input per step.
            return stat.S_ISREG(os.lstat(self.entry(digest)).st_mode)
        except FileNotFoundError:
            return False

    def size_bytes(self, *, recount: bool = False) -> int:
        """Total bytes of all entries. The first call (or `recount`, for entries another process
        sharing this store added) walks the store (sync, O(entries)); later ones are O(1)."""
        if self._bytes is not None and not recount:
            return self._bytes
        total = 0
        for algo in ALGORITHMS:
            for directory, _dirs, files in os.walk(self.root / algo):
                for name in files:
                    info = os.lstat(os.path.join(directory, name))
                    if stat.S_ISREG(info.st_mode):
                        total += info.st_size
        with self._bytes_lock:
            self._bytes = total
        return total

    def _count(self, delta: int) -> None:
        with self._bytes_lock:
            if self._bytes is not None:
                self._bytes += delta

    # --- adding entries ------------------------------------------------------------------------

    def new_temp(self) -> Path:
        """A fresh path in tmp/ (not created). The pid prefix lets `recover` spare live writers."""
        return self.tmp / f"{os.getpid()}-{secrets.token_hex(8)}"

    def commit(self, temp_path: Path, digest: str) -> Path:
        """Move a verified temp file into the store under `digest`; returns the entry's path.

        The caller has checked that the bytes in `temp_path` have `digest`. The file is fsynced and
        made 0444 before the rename, and the directory is fsynced after it, so after a crash the
        entry is either absent or complete. If the entry exists already the temp file is dropped.
        Sync: run it in a thread.
        """
        return self.commit_many([(Path(temp_path), digest)])[0]

    def commit_many(self, pairs: Sequence[tuple[Path, str]]) -> list[Path]:
        """`commit` for many files, fsyncing each touched directory once at the end."""
        entries = []
        dirty_dirs: set[Path] = set()
        for temp_path, digest in pairs:
            parse_digest(digest)
            entry = self.path_for(digest)
            if self.has(digest):
                temp_path.unlink()
            else:
                fd = os.open(temp_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                    os.fchmod(fd, READ_ONLY)
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
                dirty_dirs.update(_make_dirs(entry.parent))
                os.rename(temp_path, entry)
                self._count(size)
                dirty_dirs.add(entry.parent)
            entries.append(entry)
        for directory in dirty_dirs:
            _fsync_dir(directory)
        return entries

    async def ingest(self, paths: Sequence[Path]) -> list[tuple[str, int]]:
        """Copy files (e.g. sources the user keeps editing) into the store: [(digest, size)].

        Each file is copied to tmp/ first and the *copy* is hashed, so a source that changes
        mid-copy is stored under the digest of the bytes actually stored, never a stale one. (The
        caller's stat cache notices that the source moved on.) The source is never aliased: later
        edits to it cannot reach the store. Copies use copy_file_range, which reflinks where the
        filesystem can.
        """
        temps = [self.new_temp() for _ in paths]
        try:
            sizes = await self._in_threads(lambda pair: _copy_new(*pair), list(zip(paths, temps, strict=True)))
            digests = await hash_files(temps, algo=self.algo, jobs=self.jobs, sizes=sizes)
            await self._in_threads_batched(self.commit_many, list(zip(temps, digests, strict=True)))
        except BaseException:
            await asyncio.to_thread(_unlink_all, temps)
            raise
        return list(zip(digests, sizes, strict=True))

    async def ingest_outputs(self, paths: Sequence[Path]) -> list[tuple[str, int]]:
        """Take files the store may consume (a finished step's outputs) into the store: [(digest, size)].

        Unlike `ingest`, nothing is copied: each file is hardlinked to tmp/, hashed there, made
        0444 and renamed into place, so the source name and the entry share one inode, which is now
        read-only. The caller promises that nothing writes the file any more (the step's processes
        are gone). A file with other links (which might still be written through them), or one on
        another filesystem, is copied instead. Symlinks and other non-regular files are refused.

        All of it is one thread hop, hashing in that thread ("hashed while written", as every store
        entry is): a step's outputs are a few files, and three hops plus a `sha256sum` spawn were
        ~1.5 ms of every step. If the caller is cancelled, the thread still finishes: what it
        commits is verified, and a failure removes its own temp files.
        """
        temps = [self.new_temp() for _ in paths]

        def take_all() -> list[tuple[str, int]]:
            try:
                sizes = [_link_or_copy_new(path, temp) for path, temp in zip(paths, temps, strict=True)]
                digests = hash_files_here(temps, sizes, self.algo)
                self.commit_many(list(zip(temps, digests, strict=True)))
            except BaseException:
                _unlink_all(temps)
                raise
            return list(zip(digests, sizes, strict=True))

        return await asyncio.to_thread(take_all)

    # --- using entries -------------------------------------------------------------------------

    def link_into(self, digest: str, dest: Path) -> None:
        """Materialise an entry at `dest` (e.g. in a task dir), read-only; creates parent dirs.

        A hardlink when possible (instant, and read-only because the entry is); a 0444 copy when
        the filesystem will not link. Sync: run it in a thread.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.link_entry(digest, str(dest))

    def link_entry(self, digest: str, dest: str) -> os.stat_result:
        """`link_into` for a `dest` whose directory exists, with plain strings (a task dir links
        hundreds of inputs); returns the entry's stat, taken before linking (owner, inode, mtime:
        what a link shares). A planted symlink is no entry."""
        source = self.entry(digest)
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(errno.ENOENT, f"{digest} is not in the store", source)
        try:
            os.link(source, dest)
        except OSError as error:
            if error.errno not in LINK_FALLBACK_ERRNOS:
                raise
            try:
                _copy_new(Path(source), Path(dest))
                os.chmod(dest, READ_ONLY)
            except BaseException:
                Path(dest).unlink(missing_ok=True)
                raise
        return info

    # --- maintenance ---------------------------------------------------------------------------

    def quarantine(self, digest: str) -> Path | None:
        """Move a stored file whose bytes turned out wrong out of the store, kept for inspection.

        A stored file is verified by construction; this is for the exceptional one (disk error,
        tampering) that a peer caught serving wrong bytes."""
        path = self.path_for(digest)
        target = self.root / "quarantine" / f"{digest.replace(':', '-')}.{os.getpid()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = os.lstat(path).st_size
            os.rename(path, target)
        except FileNotFoundError:
            return None
        self._count(-size)
        return target

    def touch(self, digest: str, mtime_ns: int | None = None) -> None:
        """Mark an entry used: its atime is the LRU clock. (Not its mtime: concurrent steps link the
        same inode and check its mtime to catch a step writing to an input.) `mtime_ns`: the
        entry's, when the caller has just stat'ed it."""
        path = self.entry(digest)
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns if mtime_ns is None else mtime_ns))

    def eviction_candidates(self, high_water_bytes: int, low_water_bytes: int,
                            in_use: Collection[str] | None = None) -> list[tuple[str, int]]:
        """Least recently used entries to delete to get from above `high_water_bytes` down to
        `low_water_bytes`; never one a task dir links. (digest, size) pairs.

        Without `in_use`, a link count above one means a task dir links the entry. A store that
        shares entries with a same-host peer's store (hardlinks, artefacts.samehost) passes the
        digests its task dirs use instead: the peer's link says nothing about our task dirs."""
        if self._bytes is not None and self._bytes <= high_water_bytes:
            return []  # by our own count: no walk
        entries: list[tuple[int, str, int]] = []
        total = 0
        algo_dir = self.root / self.algo
        for dirpath, _dirs, files in os.walk(algo_dir):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                total += st.st_size
                digest = f"{self.algo}:{name}"
                if (st.st_nlink == 1) if in_use is None else (digest not in in_use):
                    entries.append((max(st.st_atime_ns, st.st_mtime_ns), digest, st.st_size))
        if total <= high_water_bytes:
            return []
        chosen: list[tuple[str, int]] = []
        for _mtime, digest, size in sorted(entries):
            if total <= low_water_bytes:
                break
            chosen.append((digest, size))
            total -= size
        return chosen

    def delete(self, digest: str) -> None:
        """Remove an entry (after its ownership was released); a task dir's link keeps its bytes.

        No chmod first: unlinking needs only the directory's permission, and the inode may be shared
        with a task dir or a same-host peer's store, whose entry must stay read-only."""
        path = self.path_for(digest)
        with contextlib.suppress(FileNotFoundError):
            size = os.lstat(path).st_size
            os.unlink(path)
            self._count(-size)

    def recover(self) -> None:
        """Crash recovery, once at start: delete leftovers in tmp/ of writers that are gone.

        Nothing else can need repair: an entry appears only by renaming a file that was fsynced
        and chmodded first, so a crash leaves each entry absent or complete, plus orphans in tmp/.
        Leftovers of a live process (another pod component sharing this store) are spared; ones
        that carry this process's pid are from a previous life with a recycled pid.
        """
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            owner = leftover.name.split("-", 1)[0]
            if owner.isdigit() and int(owner) != os.getpid() and pid_alive(int(owner)):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    # --- helpers -------------------------------------------------------------------------------

    async def _in_threads(self, function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """`function` over `items`, in order, in a few threads (one thread hop per chunk, not per item)."""

        def run_chunk(chunk: Sequence[Item]) -> list[Result]:
            return [function(item) for item in chunk]

        chunks = await self._in_threads_batched(run_chunk, items)
        return [result for chunk in chunks for result in chunk]

    async def _in_threads_batched(
        self, function: Callable[[Sequence[Item]], Result], items: Sequence[Item]
    ) -> list[Result]:
        """`function` over contiguous chunks of `items`, one thread each; waits for all before raising."""
        if not items:
            return []
        count = min(len(items), self.jobs * 2)
        size = -(-len(items) // count)
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(function, chunk) for chunk in chunks), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents; returns the parents whose listings changed."""
    if directory.is_dir():
        return []
    changed = _make_dirs(directory.parent)
    try:
        directory.mkdir()
        changed.append(directory.parent)
    except FileExistsError:
        pass
    return changed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_new(source: Path, dest: Path) -> int:
    """Copy `source` to a new file `dest` (0600); returns the bytes copied. Refuses non-regular sources."""
    source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(source_fd).st_mode):
            raise HashError(source, "not a regular file")
        dest_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            return _copy_fd(source_fd, dest_fd)
        finally:
            os.close(dest_fd)
    finally:
        os.close(source_fd)


def _copy_fd(source_fd: int, dest_fd: int) -> int:
    copied = 0
    try:
        while chunk := os.copy_file_range(source_fd, dest_fd, COPY_CHUNK_BYTES):
            copied += chunk
    except OSError as error:
        if error.errno not in COPY_RANGE_FALLBACK_ERRNOS:
            raise
    else:
        if copied:
            return copied
        # Nothing copied: an empty file, or a pseudo-file (procfs) that copy_file_range reads as empty.
    # Start over with plain reads and writes.
    os.lseek(source_fd, 0, os.SEEK_SET)
    os.lseek(dest_fd, 0, os.SEEK_SET)
    os.ftruncate(dest_fd, 0)
    copied = 0
    while data := os.read(source_fd, 1 << 20):
        view = memoryview(data)
        while view:
            written = os.write(dest_fd, view)
            view = view[written:]
            copied += written
    return copied


def _link_or_copy_new(source: Path, dest: Path) -> int:
    """Hardlink a sole-owner regular file to `dest`, else copy it; returns its size."""
    info = os.lstat(source)
    if not stat.S_ISREG(info.st_mode):
        raise HashError(source, "not a regular file (outputs must be files, not symlinks or devices)")
    if info.st_nlink == 1:
        try:
            os.link(source, dest, follow_symlinks=False)
            return info.st_size
        except OSError as error:
            if error.errno not in LINK_FALLBACK_ERRNOS:
                raise
    return _copy_new(source, dest)


def _unlink_all(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

