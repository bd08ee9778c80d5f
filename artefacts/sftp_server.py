"""A read-only SFTP server for artefacts, addressed by digest.

Clients may do exactly one thing: open `/<algo>/<ab>/<cd>/<hex>` (leading slash optional) for reading, read
it, fstat/stat it and close it. The path is parsed with `protocol.digests.digest_from_store_relpath` and
handed to a resolver, which maps the digest to a real file or refuses it. Every other operation (listing,
writes, removes, renames, mkdir, setstat, links, ...) is refused. Only the SFTP subsystem runs: no shell, no
exec, no scp, no port or agent forwarding; only public-key authentication with the configured keys.

AsyncSSH's own `chroot=` follows symlinks found inside the root (documented), so it is not used: the
resolver canonicalises the path and the server checks, on the opened descriptor, that it got that file.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

import asyncssh
from asyncssh.sftp import (
    ACE4_APPEND_DATA,
    ACE4_WRITE_ATTRIBUTES,
    ACE4_WRITE_DATA,
    FXF_ACCESS_DISPOSITION,
    FXF_APPEND,
    FXF_APPEND_DATA,
    FXF_CREAT,
    FXF_EXCL,
    FXF_OPEN_EXISTING,
    FXF_TRUNC,
    FXF_WRITE,
    MAX_SFTP_READ_LEN,
)

from artefacts.keys import authorized_keys_for, fingerprint, public_key_line
from artefacts.resolver import Resolver
from artefacts.sftp_settings import COMPRESSION_ALGS, ENCRYPTION_ALGS, LOGIN_TIMEOUT, MAX_PKTSIZE, WINDOW
from protocol.digests import digest_from_store_relpath
from protocol.messages import LocalAccess, SftpEndpoint

log = logging.getLogger(__name__)

_WRITE_PFLAGS = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | FXF_EXCL
_WRITE_ACCESS = ACE4_WRITE_DATA | ACE4_APPEND_DATA | ACE4_WRITE_ATTRIBUTES
_HAVE_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")


def _open_checked(path: Path) -> tuple[int, os.stat_result]:
    """Open a resolved path read-only without following a final symlink, and prove the fd is that file."""
    # O_NONBLOCK: a FIFO swapped in must not hang a worker thread; it is refused below by S_ISREG anyway.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EACCES, "not a regular file")
        # The resolver checked the path, then we opened it: an intermediate directory swapped for a symlink in
        # between would take us elsewhere. The kernel's name for the descriptor closes that race.
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = None  # no /proc: rely on the resolver's checks and O_NOFOLLOW
        if opened is not None and opened != str(path):
            # Also what a resolver that returns non-canonical paths (not realpath'ed) runs into.
            log.warning("refusing %s: the opened file is %s (resolvers must return canonical paths)",
                        path, opened)
            raise OSError(errno.EACCES, "path changed while opening")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


class _ServedFile:
    """An open artefact. Holds a raw fd and serves reads with pread, so concurrent requests never seek."""

    __slots__ = ("fd", "size", "st")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.st = st
        self.size = st.st_size

    # asyncssh's ranges@asyncssh.com handler seeks the file object directly (SEEK_DATA/SEEK_HOLE).
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Counters:
    def __init__(self) -> None:
        self.files_opened = 0
        self.bytes_served = 0
        self.refused = 0


def _deny(what: str) -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(f"read-only artefact server: {what} refused")


class _ArtefactSFTP(asyncssh.SFTPServer):
    """One SFTP session. Every method of the base class that touches the filesystem is overridden."""

    def __init__(self, chan: asyncssh.SSHServerChannel, resolve: Resolver, counters: _Counters) -> None:
        super().__init__(chan)
        self._resolve = resolve
        self._counters = counters

    async def _lookup(self, path: bytes) -> Path:
        try:
            digest = digest_from_store_relpath(path.decode("ascii"))
        except UnicodeDecodeError:
            digest = None
        if digest is None:
            self._counters.refused += 1
            raise asyncssh.SFTPNoSuchFile("not an artefact path")
        real = await asyncio.to_thread(self._resolve, digest)
        if real is None:
            self._counters.refused += 1
            raise asyncssh.SFTPNoSuchFile(f"no artefact {digest}")
        return real

    def map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("not an artefact path")  # nothing may reach the base implementations

    async def _open_read(self, path: bytes) -> _ServedFile:
        real = await self._lookup(path)
        fd, st = await asyncio.to_thread(_open_checked, real)
        self._counters.files_opened += 1
        return _ServedFile(fd, st)

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _ServedFile:
        if pflags & _WRITE_PFLAGS:
            self._counters.refused += 1
            raise _deny("open for writing")
        return await self._open_read(path)

    async def open56(self, path: bytes, desired_access: int, flags: int,
                     attrs: asyncssh.SFTPAttrs) -> _ServedFile:
        if (desired_access & _WRITE_ACCESS or flags & FXF_APPEND_DATA
                or flags & FXF_ACCESS_DISPOSITION != FXF_OPEN_EXISTING):
            self._counters.refused += 1
            raise _deny("open for writing")
        return await self._open_read(path)

    def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _ServedFile)
        file_obj.close()

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, _ServedFile)
        fd = file_obj.fd
        size = max(0, min(size, MAX_SFTP_READ_LEN))  # a client may not make us allocate gigabytes
        data: bytes | bytearray = b""
        if _HAVE_NOWAIT and size:
            # asyncssh handles one request at a time per session, so a thread hop per block would cost
            # throughput. RWF_NOWAIT reads only what the page cache holds, never blocking the loop; a miss
            # (cold file, or EOF) goes to a worker thread.
            buf = bytearray(size)
            try:
                n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                n = 0
            del buf[n:]
            data = buf
        if len(data) < size and offset + len(data) < file_obj.size:
            rest = await asyncio.to_thread(os.pread, fd, size - len(data), offset + len(data))
            data = bytes(data) + rest if data else rest
        self._counters.bytes_served += len(data)
        return data  # type: ignore[return-value]  # a bytearray is framed the same way as bytes

    def fstat(self, file_obj: object) -> os.stat_result:
        assert isinstance(file_obj, _ServedFile)
        return os.fstat(file_obj.fd)

    async def stat(self, path: bytes) -> os.stat_result:
        real = await self._lookup(path)
        return await asyncio.to_thread(os.lstat, real)

    lstat = stat

    def realpath(self, path: bytes) -> bytes:
        # Only artefact paths exist here, and they are already canonical. Clients (e.g. `sftp`) call
        # realpath(".") at start; answering "/" keeps them working without revealing anything.
        if path in (b"", b".", b"/"):
            return b"/"
        if digest_from_store_relpath(path.decode("ascii", "replace")) is None:
            raise asyncssh.SFTPNoSuchFile("not an artefact path")
        return b"/" + path.lstrip(b"/")

    def scandir(self, path: bytes):  # type: ignore[override]
        # A plain (non-async) method so that the opendir request itself fails, not just the first readdir.
        self._counters.refused += 1
        raise _deny("directory listing")

    def _refuse(self, *args: object, **kwargs: object) -> None:
        self._counters.refused += 1
        raise _deny("modification")

    write = setstat = lsetstat = fsetstat = remove = mkdir = rmdir = _refuse
    rename = posix_rename = symlink = link = fsync = lock = unlock = _refuse

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("not a link")

    def statvfs(self, path: bytes) -> os.statvfs_result:
        raise _deny("statvfs")

    def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        raise _deny("fstatvfs")


class _ConnectionGuard(asyncssh.SSHServer):
    """Public-key auth only, and no forwarding of any kind; tracks connections so stop() can close them."""

    def __init__(self, connections: set[asyncssh.SSHServerConnection]) -> None:
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class ArtefactServer:
    """A pod's read-only artefact server. `resolve` maps a digest to a file (see `store_resolver`)."""

    def __init__(self, resolve: Resolver, host_key: asyncssh.SSHKey, authorized_keys: Sequence[str], *,
                 encryption_algs: Sequence[str] | None = None, window: int = WINDOW,
                 max_pktsize: int = MAX_PKTSIZE) -> None:
        self._resolve = resolve
        self._host_key = host_key
        self._authorized = authorized_keys_for(authorized_keys)
        self._encryption_algs = list(encryption_algs or ENCRYPTION_ALGS)
        self._window = window
        self._max_pktsize = max_pktsize
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._counters = _Counters()
        self.port = 0

    @property
    def files_opened(self) -> int:
        return self._counters.files_opened

    @property
    def bytes_served(self) -> int:
        return self._counters.bytes_served

    @property
    def refused(self) -> int:
        """Requests refused: bad paths, unknown digests, and every attempted write or listing."""
        return self._counters.refused

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on `sock`, a listening socket, if given); returns the address and the port actually
        bound (useful with port=0)."""
        if self._acceptor is not None:
            raise RuntimeError("already started")
        counters, resolve = self._counters, self._resolve
        self._acceptor = await asyncssh.listen(
            host, port, sock=sock,
            server_factory=lambda: _ConnectionGuard(self._connections),
            server_host_keys=[self._host_key],
            authorized_client_keys=self._authorized,
            sftp_factory=lambda chan: _ArtefactSFTP(chan, resolve, counters),
            allow_scp=False,
            password_auth=False, kbdint_auth=False, host_based_auth=False,
            gss_host=None, gss_kex=False, gss_auth=False,
            agent_forwarding=False, x11_forwarding=False, allow_pty=False,
            rdns_lookup=False,
            encryption_algs=self._encryption_algs,
            compression_algs=COMPRESSION_ALGS,
            window=self._window, max_pktsize=self._max_pktsize,
            login_timeout=LOGIN_TIMEOUT,
        )
        self.port = self._acceptor.get_port()
        return host, self.port

    def endpoint(self, advertise_host: str, local: LocalAccess | None = None) -> SftpEndpoint:
        """What other pods need to pull from us: where, the host key to pin, and (`local`) how a puller on
        this host may read our files without the network (`artefacts.samehost`)."""
        if not self.port:
            raise RuntimeError("server not started")
        return SftpEndpoint(host=advertise_host, port=self.port, host_key=public_key_line(self._host_key),
                            fingerprint=fingerprint(self._host_key), local=local)

    async def stop(self) -> None:
        """Stop listening and close every open connection (asyncssh leaves them open otherwise)."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
            await acceptor.wait_closed()
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
        self._connections.clear()

    async def __aenter__(self) -> ArtefactServer:
        if self._acceptor is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
