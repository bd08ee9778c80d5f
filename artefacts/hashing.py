"""Content digests of files and byte streams, batched and parallel, off the event loop.

How `hash_files` spends the machine (sha256; measured on the 2-core reference pod, hot cache):

- Large files (>= 1 MiB) go to hashlib (OpenSSL, SHA-NI) in threads: ~1,780 MiB/s, against
  ~500 MiB/s for Debian's coreutils `sha256sum`, which is built without OpenSSL. hashlib drops
  the GIL while it digests a chunk, so such threads use every core.
- Small files are cut into batches (by count, cost and argv size) that `jobs` workers take from
  one queue, longest first. One worker hashes its batches in a thread (~180,000 4 KiB files/s
  alone: OpenSSL is faster per file than sha256sum), the others with `sha256sum -z` processes
  (~90,000/s each); the thread holds the GIL between files, so a second thread would add nothing,
  while processes add a core each and leave the event loop alone. Together ~190,000 files/s.
- A small set is hashed in one thread (~0.1 ms hop): a sha256sum spawn costs ~0.8 ms, and below
  ~2,000 small files one thread finishes first anyway.

The project's chosen design is that hashes come from batched `sha256sum` processes, so that
is the default backend. "auto" (the mix above, ~3.5x faster on large files here) is opt-in with
CP_HASH_BACKEND=auto until that choice is revisited; `backend="thread"` uses threads only.
blake3 always runs in threads. A step's outputs are not hashed here but by `hash_files_here`, in
the thread hop that takes them into the store (artefacts/store.py, `ingest_outputs`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import signal
import stat
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import blake3

from artefacts.childwatch import signal_child
from protocol.digests import ALGORITHMS, DEFAULT_ALGORITHM

BACKENDS_DEFAULT = os.environ.get("CP_HASH_BACKEND", "sha256sum")
CHUNK_BYTES = 1 << 20
# Files at least this big are hashed by hashlib in threads ("auto" backend): the per-file Python
# overhead (~5 us, under the GIL) is then noise next to the GIL-free digest time (~600 us).
LARGE_FILE_BYTES = 1 << 20
# Planning cost of a file, in bytes: its size plus a fixed per-file price for open/read/close.
PER_FILE_COST = 4 << 10
# A set whose cost times the job count is below this is hashed in one thread, with no process
# spawn at all. Measured on 2 cores: one thread beats sha256sum batches up to ~2,000 4 KiB files
# (13 ms against 17 ms); processes parallelise and the thread does not, so more cores mean a
# lower crossover. It also bounds how long the thread contends for the GIL (~15 ms).
TINY_SET_COST_TIMES_JOBS = 32 << 20
# Smallest batch worth a process: ~500 small files, ~5 ms of work for a ~0.8 ms spawn.
MIN_PROCESS_BATCH_COST = 4 << 20
# Smallest batch worth its own thread task.
MIN_THREAD_BATCH_COST = 4 << 20
# Batches per job: several, so that uneven batches and unequal workers still finish together.
BATCHES_PER_JOB = 4
# blake3's own thread pool only pays for itself on large inputs.
BLAKE3_THREADED_BYTES = 8 << 20
BACKENDS = ("auto", "sha256sum", "thread")

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_HEX64 = re.compile(rb"[0-9a-f]{64}")
# The whole output of a clean run, checked in one pass instead of line by line.
_WELL_FORMED = re.compile(rb"(?:[0-9a-f]{64} [ *][^\0]*\0)*")


class HashError(OSError):
    """A file that could not be hashed; `path` names it and `reason` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot hash {os.fsdecode(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[HashError], tuple[Path, str]]:
        return (HashError, (self.path, self.reason))


class _Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


def _new_hasher(algo: str, size_hint: int = 0) -> _Hasher:
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "blake3":
        threads = blake3.blake3.AUTO if size_hint >= BLAKE3_THREADED_BYTES else 1
        return blake3.blake3(max_threads=threads)
    raise ValueError(f"unknown digest algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")


def hash_bytes(data: bytes | bytearray | memoryview, algo: str = DEFAULT_ALGORITHM) -> str:
    """The digest string of `data`."""
    hasher = _new_hasher(algo, len(data))
    hasher.update(data)
    return f"{algo}:{hasher.hexdigest()}"


class StreamHasher:
    """Hashes bytes as they arrive (e.g. while a transfer writes them), then names them."""

    def __init__(self, algo: str = DEFAULT_ALGORITHM) -> None:
        self.algo = algo
        self.size = 0
        self._hasher = _new_hasher(algo)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return f"{self.algo}:{self._hasher.hexdigest()}"


THREAD, PROCESS, EITHER = "thread", "process", "either"


@dataclass
class _Batch:
    """Consecutive files (by index into the caller's list) hashed by one thread call or one process.

    `kind` says how: THREAD (hashlib/blake3 here), PROCESS (sha256sum), or EITHER (small sha256
    files: whichever worker takes the batch decides).
    """

    kind: str
    indices: list[int] = field(default_factory=list)
    operands: list[bytes] = field(default_factory=list)  # sha256sum's argv, unless kind is THREAD
    cost: int = 0
    argv_bytes: int = 0


async def hash_files(
    paths: Sequence[Path],
    *,
    algo: str = DEFAULT_ALGORITHM,
    jobs: int | None = None,
    backend: str = BACKENDS_DEFAULT,
    sizes: Sequence[int] | None = None,
) -> list[str]:
    """Digests (`algo:hex`) of `paths`, in the same order; raises HashError naming a file that fails.

    Symlinks are followed (a link is hashed as its target's bytes); anything but a regular file
    (directory, FIFO, device) is refused rather than read. A caller that has just stat'ed the
    files itself (the scanner's stat cache) may pass their `sizes`, which then serve only to plan
    the batches and save a stat per file (~1 us each); it vouches that they are regular files.
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown digest algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if not paths:
        return []
    jobs = max(1, jobs or os.cpu_count() or 1)
    if sizes is None:
        sizes = await asyncio.to_thread(_regular_file_sizes, paths)
    elif len(sizes) != len(paths):
        raise ValueError(f"{len(sizes)} sizes for {len(paths)} paths")
    known_sizes = sizes
    # Longest batches first, so that the last one to start is a short one.
    queue = deque(sorted(_plan(paths, sizes, algo=algo, jobs=jobs, backend=backend), key=lambda b: -b.cost))
    results: list[str | None] = [None] * len(paths)

    async def worker(threaded: bool) -> None:
        """Takes batches until none are left; a threaded worker runs EITHER batches in a thread."""
        while queue:
            batch = queue.popleft()
            if batch.kind == THREAD or (batch.kind == EITHER and threaded):
                digests = await asyncio.to_thread(_hash_in_thread, paths, batch.indices, known_sizes, algo)
            else:
                digests = await _hash_with_sha256sum(paths, batch.indices, batch.operands)
            for index, digest in zip(batch.indices, digests, strict=True):
                results[index] = digest

    # One worker hashes small files in a thread, the rest with sha256sum: one thread is the fastest
    # single small-file hasher here, but it holds the GIL between files, so a second would not help.
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(min(jobs, len(queue))):
                group.create_task(worker(threaded=index == 0 and jobs > 1))
    except BaseExceptionGroup as failures:
        # The group cancels (and so kills) the other batches; callers want the one real error.
        raise failures.exceptions[0] from None
    digests = [digest for digest in results if digest is not None]
    assert len(digests) == len(paths), "every file belongs to exactly one batch"
    return digests


def _regular_file_sizes(paths: Sequence[Path]) -> list[int]:
    sizes = []
    for path in paths:
        try:
            info = os.stat(os.fspath(path))
        except OSError as error:
            raise HashError(path, error.strerror or str(error)) from error
        if not stat.S_ISREG(info.st_mode):
            raise HashError(path, "Is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
        sizes.append(info.st_size)
    return sizes


def _argv_budget() -> int:
    """Bytes of file names one sha256sum command line may carry: well under ARG_MAX, minus the environment."""
    arg_max = os.sysconf("SC_ARG_MAX") if "SC_ARG_MAX" in os.sysconf_names else 128 << 10
    environment = sum(len(key) + len(value) + 2 + 8 for key, value in os.environb.items())
    return max(16 << 10, min(1 << 20, (arg_max - environment) // 2))


def _argv_cost(operand: bytes) -> int:
    return len(operand) + 1 + 8  # the string, its NUL, its pointer in argv


def _plan(paths: Sequence[Path], sizes: Sequence[int], *, algo: str, jobs: int, backend: str) -> list[_Batch]:
    """Cut the files into batches: by cost (so that cores finish together) and by argv size."""
    costs = [size + PER_FILE_COST for size in sizes]
    every = range(len(paths))
    groups: list[tuple[str, Sequence[int]]]
    if algo != "sha256" or backend == "thread":
        groups = [(THREAD, every)]
    elif backend == "sha256sum":
        groups = [(PROCESS, every)]
    elif sum(costs) * jobs <= TINY_SET_COST_TIMES_JOBS:
        groups = [(THREAD, every)]
    else:
        groups = [
            (THREAD, [i for i in every if sizes[i] >= LARGE_FILE_BYTES]),
            (EITHER, [i for i in every if sizes[i] < LARGE_FILE_BYTES]),
        ]
    batches = []
    for kind, indices in groups:
        if not indices:
            continue
        floor = MIN_THREAD_BATCH_COST if kind == THREAD else MIN_PROCESS_BATCH_COST
        target = _batch_target([costs[i] for i in indices], jobs, floor)
        operands = [] if kind == THREAD else [_sha256sum_operand(paths[i]) for i in indices]
        argv_limit = math.inf if kind == THREAD else _argv_budget()
        batches += _fill(kind, indices, operands, costs, target, argv_limit)
    return batches


def _batch_target(costs: list[int], jobs: int, floor: int) -> int:
    """The cost at which a batch is full: a share of the work, once files that travel alone are set aside.

    Without setting them aside, one 5 GiB file would make the target so large that thousands of
    small files would share a single batch and a single core.
    """
    remaining = sum(costs)
    slots = jobs * BATCHES_PER_JOB
    target = max(floor, math.ceil(remaining / slots))
    for cost in sorted(costs, reverse=True):
        if cost < target:
            break
        remaining -= cost
        target = max(floor, math.ceil(remaining / slots))
    return target


def _fill(
    kind: str,
    indices: Sequence[int],
    operands: Sequence[bytes],
    costs: Sequence[int],
    target: int,
    argv_limit: float,
) -> list[_Batch]:
    """Greedy, in the caller's order (neighbours in a directory stay together); a big file travels alone.

    `operands` lines up with `indices`, or is empty for THREAD batches.
    """
    batches: list[_Batch] = []
    current = _Batch(kind)
    for position, index in enumerate(indices):
        operand = [operands[position]] if operands else []
        argv = _argv_cost(operand[0]) if operand else 0
        if costs[index] >= target:
            batches.append(_Batch(kind, [index], operand, costs[index], argv))
            continue
        if current.indices and current.argv_bytes + argv > argv_limit:
            batches.append(current)
            current = _Batch(kind)
        current.indices.append(index)
        current.operands += operand
        current.cost += costs[index]
        current.argv_bytes += argv
        if current.cost >= target:
            batches.append(current)
            current = _Batch(kind)
    if current.indices:
        batches.append(current)
    return batches


def hash_files_here(paths: Sequence[Path], sizes: Sequence[int], algo: str = DEFAULT_ALGORITHM) -> list[str]:
    """Digests of `paths` hashed in the calling thread (hashlib/blake3): for code already off the
    event loop that takes a few files in one hop, e.g. a step's outputs into the store, where a
    `sha256sum` spawn (~0.8 ms) would cost more than the hashing. `sizes` only tunes blake3."""
    return _hash_in_thread(paths, range(len(paths)), sizes, algo)


def _hash_in_thread(paths: Sequence[Path], indices: Sequence[int], sizes: Sequence[int], algo: str) -> list[str]:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    digests = []
    for index in indices:
        path = paths[index]
        hasher = _new_hasher(algo, sizes[index])
        try:
            with open(path, "rb", buffering=0) as file:
                while read := file.readinto(view):
                    hasher.update(view[:read])
        except OSError as error:
            raise HashError(path, error.strerror or str(error)) from error
        digests.append(f"{algo}:{hasher.hexdigest()}")
    return digests


def _sha256sum_operand(path: Path) -> bytes:
    name = os.fspath(path)
    encoded = name.encode(_FS_ENCODING, _FS_ERRORS) if isinstance(name, str) else name
    return b"./-" if encoded == b"-" else encoded  # a lone "-" means stdin, even after "--"


async def _hash_with_sha256sum(paths: Sequence[Path], indices: Sequence[int], operands: Sequence[bytes]) -> list[str]:
    """Digests of `paths[i] for i in indices` by one sha256sum; `operands` are their names as argv."""
    process = await asyncio.create_subprocess_exec(
        "sha256sum",
        "-z",
        "--",
        *operands,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            signal_child(process, signal.SIGKILL)
            await process.wait()
        raise
    hexes, failed = _parse_sha256sum(out, operands)
    if failed is not None:
        path = paths[indices[failed]]
        raise HashError(path, await asyncio.to_thread(_failure_reason, path, err))
    if process.returncode != 0:
        raise HashError(
            paths[indices[0]], f"sha256sum exited with {process.returncode}: {err.decode(errors='replace')}"
        )
    return [f"sha256:{hexdigest}" for hexdigest in hexes]


def _parse_sha256sum(out: bytes, operands: Sequence[bytes]) -> tuple[list[str], int | None]:
    """Hex digests in operand order, and the position of the first operand with no line, if any.

    With -z each line is `<hex> <space|*><name>NUL`, the name unescaped. A file sha256sum cannot
    read gets no line, so lines are matched to operands by name, not merely by count.
    """
    records = out.split(b"\0")
    if records and records[-1] == b"":
        records.pop()
    if len(records) == len(operands) and _WELL_FORMED.fullmatch(out):
        if [record[66:] for record in records] == operands:
            return [record[:64].decode() for record in records], None
    hexes: list[str] = []
    position = 0
    for record in records:
        hexdigest, separator, name = record[:64], record[64:66], record[66:]
        if not _HEX64.fullmatch(hexdigest) or separator not in (b"  ", b" *"):
            raise HashError(
                os.fsdecode(operands[min(position, len(operands) - 1)]),
                f"unparsable sha256sum output {record!r}",
            )
        if position >= len(operands) or name != operands[position]:
            return hexes, min(position, len(operands) - 1)
        hexes.append(hexdigest.decode())
        position += 1
    return hexes, (position if position < len(operands) else None)


def _failure_reason(path: Path, stderr: bytes) -> str:
    """Why a file could not be read, in the system's words; sha256sum's message if it reads now."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        return error.strerror or str(error)
    return stderr.decode(errors="replace").strip() or "sha256sum printed no digest for it"
