"""A pod's artefact server that listens at once and starts SSH when the first peer connects.

The SFTP server (`artefacts.sftp_server`) needs asyncssh, ~90 ms of CPU to import in every
process. Chefs and the MajorDomo of the embedded federation read each other's files on the same
host (`artefacts.samehost`) and never connect, and on the first build of the day four such
processes start at once on a laptop's cores. So the port is bound and advertised at start, with
the host key's public line read from its `.pub` file, and the listening socket is only watched:
the first connection waiting on it imports asyncssh (in a thread), loads the host key, and hands
the socket to the real server, which accepts that connection from the backlog. A peer connecting
first waits those ~100 ms once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from artefacts.keys import check_public_key_line, fingerprint, load_or_create_key, matches_public_line
from artefacts.resolver import Resolver
from protocol.messages import LocalAccess, SftpEndpoint

if TYPE_CHECKING:
    from artefacts.sftp_server import ArtefactServer

log = logging.getLogger(__name__)
BACKLOG = 100  # as asyncssh.listen's default


class LazyArtefactServer:
    """`ArtefactServer`'s interface (start, endpoint, stop, counters), asyncssh loaded on first use.

    `host_key` is the path of the private host key and `host_key_line` its public line (from
    `keys.ensure_key`); the key itself is loaded, and checked against the line, when SSH starts."""

    def __init__(self, resolve: Resolver, host_key: Path, host_key_line: str, authorized_keys: Sequence[str]) -> None:
        for line in authorized_keys:
            check_public_key_line(line, "authorized key")  # refused now, not at a peer's first login
        check_public_key_line(host_key_line, f"{host_key}.pub")
        self._resolve = resolve
        self._host_key = host_key
        self._host_key_line = host_key_line
        self._authorized = list(authorized_keys)
        self._sock: socket.socket | None = None
        self._starting: asyncio.Task[None] | None = None
        self._server: ArtefactServer | None = None
        self.port = 0

    @property
    def ssh_started(self) -> bool:
        return self._server is not None

    @property
    def files_opened(self) -> int:
        return self._server.files_opened if self._server else 0

    @property
    def bytes_served(self) -> int:
        return self._server.bytes_served if self._server else 0

    @property
    def refused(self) -> int:
        return self._server.refused if self._server else 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Bind and listen; returns the address and the port actually bound (useful with port=0)."""
        if self._sock is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        family, kind, proto, _name, address = (await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        loop.add_reader(sock.fileno(), self._first_peer)
        return host, self.port

    def endpoint(self, advertise_host: str, local: LocalAccess | None = None) -> SftpEndpoint:
        """What other pods need to pull from us (see `ArtefactServer.endpoint`)."""
        if not self.port:
            raise RuntimeError("server not started")
        return SftpEndpoint(host=advertise_host, port=self.port, host_key=self._host_key_line,
                            fingerprint=fingerprint(self._host_key_line), local=local)

    def _first_peer(self) -> None:
        assert self._sock is not None
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._starting = asyncio.create_task(self._start_ssh(self._sock))

    async def _start_ssh(self, sock: socket.socket) -> None:
        try:
            module = await asyncio.to_thread(importlib.import_module, "artefacts.sftp_server")
            key = await asyncio.to_thread(load_or_create_key, self._host_key)
            if not matches_public_line(key, self._host_key_line):
                raise ValueError(f"{self._host_key} is not the key of {self._host_key}.pub, which peers were told")
            server = module.ArtefactServer(self._resolve, key, self._authorized)
            await server.start(sock=sock)
            self._server = server
        except Exception:
            # Peers see connections refused and pull from other owners; the log says why.
            log.exception("artefact server on port %s could not start SSH", self.port)
            self._close_socket()

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._starting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting  # bounded: imports, a key read and a listen
        if self._server is not None:
            await self._server.stop()  # closes the socket it was handed
            self._server, self._sock = None, None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:  # not handed to a running server (stop() closes that one)
            with contextlib.suppress(RuntimeError):  # no running loop any more
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    async def __aenter__(self) -> LazyArtefactServer:
        if self._sock is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
