"""Pulling artefacts by digest from other pods' artefact servers, verified before they are kept.

A `Puller` keeps one SSH connection per endpoint, pins each server's host key to the one its endpoint
advertises, reads with large blocks and many requests in flight, hashes while it receives, and commits to
the store only bytes whose size and digest match. Concurrent pulls of one digest share one transfer.

Same-host shortcut (`artefacts.samehost`): an owner whose endpoint advertises our host identity is read
from the filesystem first: its store entries are hardlinked, other files copied and verified like an SFTP
receipt. Any failure there falls back to SFTP. Off with `same_host=False` or CP_SAME_HOST=0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from artefacts.hashing import StreamHasher
from artefacts.keys import fingerprint, known_hosts_for, load_or_create_key
from artefacts.lazymodule import LazyModule
from artefacts.localtake import VIA_COPY, VIA_HELD, VIA_LINK, VIA_SFTP, LocalWant, Taken, take_into_store
from artefacts.samehost import (
    copy_verified,
    enabled_by_env,
    host_identity,
    local_path,
)
from artefacts.sftp_settings import COMPRESSION_ALGS, ENCRYPTION_ALGS, MAX_PKTSIZE, WINDOW
from artefacts.store import Store
from protocol.digests import parse_digest, store_relpath
from protocol.messages import LocalAccess, SftpEndpoint

if TYPE_CHECKING:
    import asyncssh
else:
    asyncssh = LazyModule("asyncssh")  # imported by the first pull that needs SFTP: same-host pulls do not

log = logging.getLogger(__name__)

USERNAME = "computepods"  # the server ignores it: the key is the identity
# Read requests: 2 MiB blocks, 6 in flight per transfer (12 MiB). Measured on loopback (bench/transfer.py):
# more bytes in flight only pile up in the server's asyncio write buffer, whose copying costs the server
# ~75% more CPU (4 MiB x 8: 0.28 s per 256 MiB against 0.16 s) for no more throughput; 12 MiB still covers
# the bandwidth-delay product of a 10 Gbit/s link with ~10 ms round trips.
DEFAULT_PARALLEL = 6
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
DEFAULT_TRANSFERS = 8  # transfers at once per Puller; bounds memory (each holds up to ~28 MiB in flight)
CONNECT_TIMEOUT = 5.0  # TCP connect + SSH handshake + auth, per attempt
IO_TIMEOUT = 30.0  # longest wait for the next block before the owner counts as stalled
_WRITE_HIGH_WATER = 16 * 1024 * 1024  # received bytes waiting for the disk before we stop reading

class Pulled(NamedTuple):
    path: Path
    via: str


class PullFailure(Exception):
    """Base of the errors a pull raises."""


class DigestMismatch(PullFailure):
    """An owner served bytes whose size or digest is not the one asked for. Nothing was kept."""

    def __init__(self, digest: str, endpoint: SftpEndpoint, got: str, size: int | None = None) -> None:
        self.digest = digest
        self.endpoint = endpoint
        self.got = got
        self.size = size
        detail = f"{got}" if size is None else f"{got} ({size} bytes)"
        super().__init__(f"{endpoint.host}:{endpoint.port} served {detail} for {digest}")


class HostKeyMismatch(PullFailure):
    """The server's host key is not the one its endpoint advertises: possibly not the pod we think it is."""

    def __init__(self, endpoint: SftpEndpoint, detail: str) -> None:
        self.endpoint = endpoint
        pinned = endpoint.fingerprint or _safe_fingerprint(endpoint.host_key)
        super().__init__(f"host key of {endpoint.host}:{endpoint.port} does not match the pinned key "
                         f"{pinned}: {detail}")


class PullError(PullFailure):
    """No owner could deliver the digest; `failures` says what went wrong with each, in the order tried."""

    def __init__(self, digest: str, failures: Sequence[tuple[SftpEndpoint, BaseException]]) -> None:
        self.digest = digest
        self.failures = list(failures)
        lines = [f"  {ep.host}:{ep.port}: {type(exc).__name__}: {exc}" for ep, exc in self.failures]
        super().__init__(f"could not pull {digest} from any owner:\n" + "\n".join(lines) if lines
                         else f"could not pull {digest}: no owner given")


def _safe_fingerprint(line: str) -> str:
    try:
        return fingerprint(line)
    except Exception:
        return "<unparsable key>"


def _endpoint_key(ep: SftpEndpoint) -> tuple[str, int, str]:
    return (ep.host, ep.port, ep.host_key.strip())


def _load_sync_file_range() -> Callable[[int, int, int], None]:
    """`sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`: start writeback of a range, without waiting.

    Pushing received bytes to disk while the transfer goes on leaves little for the store's final fsync
    (measured: fsync of 256 MiB written at once ~0.13 s of a ~0.6 s pull). A no-op where unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, n: None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, n: int) -> None:
        func(fd, offset, n, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means the fsync does all the work

    return start_writeback


_start_writeback = _load_sync_file_range()
_WRITEBACK_EVERY = 8 * 1024 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _OrderedSink:
    """Takes blocks in any order, writes and hashes them in order in a worker thread.

    Disk writes and hashing run off the event loop (hashlib and os.write release the GIL, so they overlap
    with decryption on the loop); at most one batch is in the thread at a time, which keeps order.
    """

    def __init__(self, fd: int, hasher: StreamHasher) -> None:
        self._fd = fd
        self._hasher = hasher
        self._next = 0  # offset of the first byte not yet handed over
        self._early: dict[int, bytes] = {}  # out-of-order blocks by offset
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._job: asyncio.Future[None] | None = None
        self._written = 0  # touched only by the writer thread
        self._synced = 0
        self.received = 0

    def _write_batch(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hasher.update(chunk)
            _write_all(self._fd, chunk)
            self._written += len(chunk)
        if self._written - self._synced >= _WRITEBACK_EVERY:
            _start_writeback(self._fd, self._synced, self._written - self._synced)
            self._synced = self._written

    async def feed(self, offset: int, data: bytes) -> None:
        if offset != self._next:
            if offset < self._next or offset in self._early:
                raise asyncssh.SFTPBadMessage(f"overlapping block at offset {offset}")
            self._early[offset] = data
            return
        self._take(data)
        while self._next in self._early:
            self._take(self._early.pop(self._next))
        if self._job is not None and not self._job.done() and self._batch_bytes < _WRITE_HIGH_WATER:
            return  # the thread is busy; keep collecting
        await self._flush()

    def _take(self, data: bytes) -> None:
        self._batch.append(data)
        self._batch_bytes += len(data)
        self._next += len(data)
        self.received += len(data)

    async def _flush(self) -> None:
        if self._job is not None:
            job, self._job = self._job, None
            await job
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._job = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))

    async def finish(self) -> int:
        """Write what is left; returns the number of contiguous bytes received."""
        await self._flush()
        await self._flush()
        if self._early:
            raise asyncssh.SFTPBadMessage("gap in the received data")
        return self._next

    async def abort(self) -> None:
        if self._job is not None:
            with contextlib.suppress(Exception):
                await self._job
            self._job = None


class Puller:
    """Pulls artefacts into `store` from owners' artefact servers, authenticating with `client_key`.

    `parallel` is the number of read requests kept in flight per transfer, `block_size` their size, and
    `transfers` how many files are transferred at once (further pulls wait their turn). `same_host` turns the
    same-host shortcut on or off (default: on unless CP_SAME_HOST=0); `link=False` copies even linkable
    entries (for a pod whose steps could write through a shared inode).
    """

    def __init__(self, client_key: asyncssh.SSHKey | Path, store: Store, *, parallel: int = DEFAULT_PARALLEL,
                 block_size: int = DEFAULT_BLOCK_SIZE, transfers: int = DEFAULT_TRANSFERS,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 io_timeout: float = IO_TIMEOUT, encryption_algs: Sequence[str] | None = None,
                 window: int = WINDOW, max_pktsize: int = MAX_PKTSIZE, same_host: bool | None = None,
                 link: bool = True) -> None:
        if parallel < 1 or block_size < 1 or transfers < 1:
            raise ValueError("parallel, block_size and transfers must be positive")
        self._key = client_key  # a key file is read at the first SFTP connection
        self._store = store
        self._parallel = parallel
        self._block_size = block_size
        self._slots = asyncio.Semaphore(transfers)
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._encryption_algs = list(encryption_algs or ENCRYPTION_ALGS)
        self._window = window
        self._max_pktsize = max_pktsize
        self._conns: dict[tuple[str, int, str], asyncio.Task[tuple[asyncssh.SSHClientConnection,
                                                                   asyncssh.SFTPClient]]] = {}
        self._inflight: dict[str, tuple[SftpEndpoint, asyncio.Task[Pulled]]] = {}
        self._closed = False
        self._host = host_identity() if (enabled_by_env() if same_host is None else same_host) else ""
        self._link = link
        self.files_pulled = 0  # verified SFTP transfers committed to the store (or fetched to a workspace)
        self.bytes_pulled = 0
        self.mismatches = 0  # transfers refused because the bytes did not match their digest
        # The same-host shortcut, counted apart: these bytes never crossed a network.
        self.files_linked = 0
        self.bytes_linked = 0
        self.files_copied = 0
        self.bytes_copied = 0
        self.local_fallbacks = 0  # same-host attempts that gave up (missing, changed, unlinkable): SFTP next

    # ---- connections -------------------------------------------------------------------------------

    async def _client_key(self) -> asyncssh.SSHKey:
        if isinstance(self._key, Path):  # asyncssh's ~90 ms import happens in that thread, not on the loop
            self._key = await asyncio.to_thread(load_or_create_key, self._key)
        return self._key

    async def _connect(self, ep: SftpEndpoint) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        client_key = await self._client_key()
        try:
            known_hosts = known_hosts_for([ep.host_key])
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise HostKeyMismatch(ep, f"endpoint's host key is unusable: {exc}") from exc
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn = await asyncssh.connect(
                    ep.host, ep.port,
                    config=None,  # never read ~/.ssh/config: it could redirect or weaken the connection
                    known_hosts=known_hosts,
                    client_keys=[client_key], agent_path=None, username=USERNAME,
                    password_auth=False, kbdint_auth=False, host_based_auth=False,
                    gss_host=None, gss_kex=False, gss_auth=False,
                    encryption_algs=self._encryption_algs, compression_algs=COMPRESSION_ALGS,
                    window=self._window, max_pktsize=self._max_pktsize,
                    connect_timeout=self._connect_timeout,
                )
                try:
                    sftp = await conn.start_sftp_client()
                except BaseException:
                    conn.close()
                    raise
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyMismatch(ep, str(exc)) from exc
        return conn, sftp

    async def _sftp_for(self, ep: SftpEndpoint) -> asyncssh.SFTPClient:
        """The cached SFTP session for an endpoint; concurrent callers share one connection attempt."""
        if self._closed:
            raise RuntimeError("Puller is closed")
        key = _endpoint_key(ep)
        task = self._conns.get(key)
        if task is not None and task.done():
            if task.cancelled() or task.exception() is not None or task.result()[0].is_closed():
                self._evict(key, task)
                task = None
        if task is None:
            task = asyncio.ensure_future(self._connect(ep))
            self._conns[key] = task
        try:
            return (await asyncio.shield(task))[1]
        except BaseException:
            if task.done():
                self._evict(key, task)  # do not cache failures: the next pull tries again
            raise

    def _evict(self, key: tuple[str, int, str], task: asyncio.Task[Any] | None = None) -> None:
        """Forget a cached connection (only `task`, if given, so as not to drop a newer one) and close it."""
        if task is None:
            task = self._conns.get(key)
            if task is None:
                return
        if self._conns.get(key) is task:
            del self._conns[key]
        if task.done() and not task.cancelled() and task.exception() is None:
            task.result()[0].close()

    # ---- transfers ---------------------------------------------------------------------------------

    async def _download(self, digest: str, size: int, ep: SftpEndpoint, fd: int) -> None:
        """Read the artefact from `ep` into `fd`, verifying size and digest; raises DigestMismatch."""
        algo, _ = parse_digest(digest)
        hasher = StreamHasher(algo)
        sink = _OrderedSink(fd, hasher)
        try:
            async with self._slots:
                received = await self._download_once(ep, digest, size, sink)
        except BaseException:
            await sink.abort()
            raise
        got = hasher.digest()
        if received != size or got != digest:
            self.mismatches += 1
            raise DigestMismatch(digest, ep, got, received)

    async def _download_once(self, ep: SftpEndpoint, digest: str, size: int, sink: _OrderedSink) -> int:
        for attempt in (1, 2):
            sftp = await self._sftp_for(ep)
            try:
                await self._read_into(sftp, digest, size, sink)
                break
            except (asyncssh.SFTPConnectionLost, asyncssh.ConnectionLost, BrokenPipeError) as exc:
                # A cached connection may have died since its last use (the owner restarted, say): if
                # nothing was received yet, reconnect once; otherwise this owner has failed.
                self._evict(_endpoint_key(ep))
                if attempt == 2 or sink.received:
                    raise
                log.debug("reconnecting to %s:%s after %s", ep.host, ep.port, exc)
        return await sink.finish()

    async def _read_into(self, sftp: asyncssh.SFTPClient, digest: str, size: int, sink: _OrderedSink) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._io_timeout) as deadline:
            async with await sftp.open(store_relpath(digest), "rb", block_size=self._block_size,
                                       max_requests=self._parallel) as f:
                if size == 0:
                    return
                # read_parallel keeps `parallel` requests in flight; blocks may arrive out of order and short
                # reads are re-requested. Reading exactly `size` bytes means a longer file cannot make us
                # write more than announced; a shorter one shows up as a size mismatch.
                async for offset, data in await f.read_parallel(size, 0):
                    await sink.feed(offset, data)
                    deadline.reschedule(loop.time() + self._io_timeout)

    async def _transfer_to_store(self, digest: str, size: int, ep: SftpEndpoint, hint: str) -> Pulled:
        store = self._store
        if await asyncio.to_thread(store.has, digest):  # landed while we queued (another pull, another Puller)
            return Pulled(store.path_for(digest), VIA_HELD)
        if ep.local is not None and self.is_local(ep):
            taken = await self._take_local(digest, size, ep.local, hint)
            if taken is not None:
                return taken
        return Pulled(await self._sftp_to_store(digest, size, ep), VIA_SFTP)

    async def _sftp_to_store(self, digest: str, size: int, ep: SftpEndpoint) -> Path:
        store = self._store
        temp = Path(await asyncio.to_thread(store.new_temp))
        committed = False
        try:
            fd = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                         0o600)
            try:
                await self._download(digest, size, ep, fd)
            finally:
                os.close(fd)
            path = Path(await asyncio.to_thread(store.commit, temp, digest))
            committed = True
        finally:
            if not committed:
                await asyncio.to_thread(_unlink_quietly, temp)
        self.files_pulled += 1
        self.bytes_pulled += size
        return path

    async def _coalesced(self, digest: str, ep: SftpEndpoint,
                         start: Callable[[], Awaitable[Pulled]]) -> Pulled:
        """Run `start` unless a transfer of `digest` is already under way; then share its result.

        If the shared transfer was from another owner and failed, try our own owner rather than report
        someone else's failure.
        """
        for _ in range(8):  # bounded: each round waits for a whole transfer
            current = self._inflight.get(digest)
            if current is None:
                task: asyncio.Task[Pulled] = asyncio.ensure_future(start())
                self._inflight[digest] = (ep, task)
                task.add_done_callback(lambda t, d=digest: self._forget(d, t))
                # shield: one caller being cancelled must not cancel the transfer the others wait for
                return await asyncio.shield(task)
            other_ep, task = current
            try:
                return await asyncio.shield(task)
            except Exception:
                if _endpoint_key(other_ep) == _endpoint_key(ep):
                    raise
        raise PullFailure(f"pull of {digest} kept being superseded")

    def _forget(self, digest: str, task: asyncio.Task[Pulled]) -> None:
        current = self._inflight.get(digest)
        if current is not None and current[1] is task:
            del self._inflight[digest]
        if not task.cancelled():
            task.exception()  # mark retrieved: failures are reported to the waiters, not as "never retrieved"

    # ---- same host ---------------------------------------------------------------------------------

    def is_local(self, ep: SftpEndpoint) -> bool:
        """True when `ep`'s owner is on our host (and the shortcut is on): try its files before SFTP."""
        return bool(self._host) and ep.local is not None and ep.local.host == self._host

    def prefer_local(self, endpoints: Sequence[SftpEndpoint]) -> list[SftpEndpoint]:
        """Same-host owners first (no network), otherwise in the order given."""
        return sorted(endpoints, key=lambda ep: not self.is_local(ep))

    async def take_local_many(self, wanted: Sequence[tuple[str, int, SftpEndpoint, str]]) -> dict[str, Pulled]:
        """Take many artefacts from same-host owners in one thread, committed together
        (`artefacts/localtake.py`): (digest, size, owner, project path) -> how each came. What is missing
        from the answer (its owner not on this host, or its file not giving the bytes) is for `pull_via`."""
        wants = [LocalWant(digest, size, ep.local, hint) for digest, size, ep, hint in wanted
                 if ep.local is not None and self.is_local(ep)]
        return await self._take(wants) if wants else {}

    async def _take_local(self, digest: str, size: int, access: LocalAccess, hint: str) -> Pulled | None:
        """Put an owner's file into our store without the network; None (counted) when that did not work."""
        return (await self._take([LocalWant(digest, size, access, hint)])).get(digest)

    async def _take(self, wants: list[LocalWant]) -> dict[str, Pulled]:
        """Same-host takes, counted: each one that did not work is a fallback (SFTP decides next)."""
        taken: dict[str, Taken | None]
        try:
            taken = await asyncio.to_thread(take_into_store, self._store, wants, link=self._link)
        except OSError as exc:  # the commit failed: as with any one file's failure, SFTP decides
            log.debug("same-host pull into %s failed: %s", self._store.root, exc)
            taken = dict.fromkeys((want.digest for want in wants), None)
        sizes = {want.digest: want.size for want in wants}
        pulled: dict[str, Pulled] = {}
        for digest, got in taken.items():
            if got is None:
                self.local_fallbacks += 1
                continue
            self._count_local(got.via, sizes[digest])
            pulled[digest] = Pulled(got.path, got.via)
        return pulled

    def _count_local(self, via: str, size: int) -> None:
        if via == VIA_LINK:
            self.files_linked += 1
            self.bytes_linked += size
        elif via == VIA_COPY:
            self.files_copied += 1
            self.bytes_copied += size

    async def _fetch_local(self, digest: str, size: int, access: LocalAccess, dest: Path) -> bool:
        """Copy a same-host owner's file to `dest`, verified; never a link (a user editing the workspace
        file in place must not change a store entry). False (counted) when that did not work."""
        try:
            ok = await asyncio.to_thread(_copy_to_output, access, digest, size, dest)
        except OSError as exc:
            log.debug("same-host fetch of %s from %s failed: %s", digest, access.root, exc)
            ok = False
        if not ok:
            self.local_fallbacks += 1
            return False
        self.files_copied += 1
        self.bytes_copied += size
        return True

    # ---- public API --------------------------------------------------------------------------------

    async def pull(self, digest: str, size: int, endpoint: SftpEndpoint, *, path: str = "") -> Path:
        """Make sure the store holds `digest` (of `size` bytes), pulling it from `endpoint` if needed.

        Returns the store path. Raises DigestMismatch if the owner served other bytes (nothing is kept),
        HostKeyMismatch if the owner's host key is not the pinned one, or the connection/SFTP error.
        `path` is the artefact's project path, which a same-host workspace owner is read by.
        """
        return (await self.pull_via(digest, size, endpoint, path=path)).path

    async def pull_via(self, digest: str, size: int, endpoint: SftpEndpoint, *, path: str = "") -> Pulled:
        """`pull`, also saying how the bytes came: VIA_HELD, VIA_SFTP, VIA_LINK or VIA_COPY."""
        parse_digest(digest)
        if await asyncio.to_thread(self._store.has, digest):
            return Pulled(self._store.path_for(digest), VIA_HELD)
        return await self._coalesced(digest, endpoint,
                                     lambda: self._transfer_to_store(digest, size, endpoint, path))

    async def pull_any(self, digest: str, size: int, endpoints: Sequence[SftpEndpoint], *,
                       path: str = "") -> tuple[Path, SftpEndpoint]:
        """Pull from the first owner that delivers the right bytes: same-host owners first, then in the
        order given.

        Falls back on connection errors, timeouts, refusals and digest mismatches; raises PullError
        naming every owner's failure when none delivers.
        """
        parse_digest(digest)
        failures: list[tuple[SftpEndpoint, BaseException]] = []
        for ep in self.prefer_local(endpoints):
            try:
                return await self.pull(digest, size, ep, path=path), ep
            except Exception as exc:
                log.info("pull of %s from %s:%s failed: %s", digest, ep.host, ep.port, exc)
                failures.append((ep, exc))
        raise PullError(digest, failures)

    async def fetch_to(self, digest: str, size: int, endpoints: Sequence[SftpEndpoint],
                       dest: Path) -> tuple[Path, SftpEndpoint | None]:
        """Put the artefact at `dest` (mode 0644), atomically: readers see the old file or the whole new one.

        Bytes come from this Puller's store when it holds the digest (endpoint None), else from the first
        owner that delivers them verified (same-host owners first, copied). Meant for final outputs pulled
        back into a workspace.
        """
        parse_digest(digest)
        dest = Path(dest)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        if await asyncio.to_thread(self._store.has, digest):
            await asyncio.to_thread(_copy_atomically, self._store.path_for(digest), dest)
            return dest, None
        failures: list[tuple[SftpEndpoint, BaseException]] = []
        for ep in self.prefer_local(endpoints):
            if ep.local is not None and self.is_local(ep) and await self._fetch_local(digest, size, ep.local, dest):
                return dest, ep
            try:
                await self._fetch_one(digest, size, ep, dest)
                return dest, ep
            except Exception as exc:
                log.info("fetch of %s from %s:%s failed: %s", digest, ep.host, ep.port, exc)
                failures.append((ep, exc))
        raise PullError(digest, failures)

    async def _fetch_one(self, digest: str, size: int, ep: SftpEndpoint, dest: Path) -> None:
        fd, temp = await asyncio.to_thread(tempfile.mkstemp, prefix=f".{dest.name}.", suffix=".part",
                                           dir=dest.parent)
        done = False
        try:
            try:
                await self._download(digest, size, ep, fd)
                await asyncio.to_thread(_finish_output, fd, temp, dest)
                done = True
            finally:
                os.close(fd)
        finally:
            if not done:
                await asyncio.to_thread(_unlink_quietly, Path(temp))
        self.files_pulled += 1
        self.bytes_pulled += size

    async def close(self) -> None:
        """Cancel transfers under way and close every connection."""
        self._closed = True
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = list(self._conns.values())
        self._conns.clear()
        for task in conns:
            if not task.done():
                task.cancel()
        for task in conns:
            try:
                conn, _ = await task
            except BaseException:
                continue
            conn.close()
            await conn.wait_closed()

    async def __aenter__(self) -> Puller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _finish_output(fd: int, temp: str, dest: Path) -> None:
    os.fchmod(fd, 0o644)  # a normal output file, unlike the read-only store entries
    os.fsync(fd)
    os.replace(temp, dest)


def _copy_to_output(access: LocalAccess, digest: str, size: int, dest: Path) -> bool:
    """Copy a same-host owner's file to `dest` through a temp file, hashing as it goes; rename only if the
    digest matched."""
    source = local_path(access, digest)
    if source is None:
        return False
    fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    done = False
    try:
        try:
            if copy_verified(source, fd, digest, size):
                _finish_output(fd, temp, dest)
                done = True
        finally:
            os.close(fd)
    finally:
        if not done:
            _unlink_quietly(Path(temp))
    return done


def _copy_atomically(src: Path, dest: Path) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1024 * 1024)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        _unlink_quietly(Path(temp))
        raise
