"""The resident build server: `majordomo build` runs inside the resident supervisor.

A build's own process pays ~0.2 s of Python imports (NATS, SSH) and a connection, an SFTP server and
the chefs' registry before its first step: more than `make` or `latexmk` take for a whole edit
cycle. So the supervisor that keeps the embedded federation up also runs builds, as the servers of
Bazel and Gradle do: the `majordomo build` command is then a thin client (majordomo/build_client.py)
that sends its arguments over a Unix socket in `.majordomo/` and prints what comes back.

Wire format, one JSON object per line. The client sends one request: `argv`, `cwd`, and how its
streams render (`out_tty`, `err_tty`, `columns`). The server answers with `{"o": text}` (stdout),
`{"e": text}` (stderr), and last `{"exit": code}` (with `"federation_failed": true` when the local
chefs could not start); or `{"retry": true}` when it is shutting down.
The client closing the socket (Ctrl-C) cancels its build, as Ctrl-C does in-process.

Builds of the project run one at a time: a second request waits its turn, and says so.

The client does not check the no-op stamp when a server runs: the server watches the project's
directories (majordomo/tree_watch.py), so it compares with the stamp only the files that events
named, where the client would stat them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from majordomo.build_client import SOCKET_NAME, socket_address
from majordomo.federation import Federation
from majordomo.server_memory import ServerMemory
from majordomo.tree_watch import TreeWatch

log = logging.getLogger(__name__)


class ForwardedStream(io.TextIOBase):
    """A text stream whose writes go to the client as frames of one channel ("o" or "e")."""

    def __init__(self, writer: asyncio.StreamWriter, channel: str, tty: bool, columns: int) -> None:
        super().__init__()
        self._writer = writer
        self._channel = channel
        self._tty = tty
        self.forwarded_size = os.terminal_size((max(20, columns), 24))  # read by the live reporter

    def write(self, text: str) -> int:
        if text and not self._writer.is_closing():
            self._writer.write(json.dumps({self._channel: text}).encode() + b"\n")
        return len(text)

    def isatty(self) -> bool:
        return self._tty  # the client's terminal, with TERM checked there

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a forwarded stream has no descriptor")


class BuildServer:
    """Serves build requests for one project on one federation, kept connected between builds."""

    def __init__(self, root: Path, nats_url: str, chefs_ready: asyncio.Future[None] | None = None) -> None:
        """`chefs_ready`: the local chefs' start, still under way; builds join the federation after it."""
        self.root = root
        self.state_dir = root / ".majordomo"
        self.socket_name = SOCKET_NAME
        self.federation = Federation(root, "", None, attach_url=nats_url, chefs_ready=chefs_ready)
        self._chefs_ready = chefs_ready
        self.busy = 0  # requests accepted and not finished (waiting or building)
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_used = time.monotonic()
        self.closing = False  # set while the supervisor decides to stop for idleness: refuse new work
        self._turn = asyncio.Lock()
        self.memory = ServerMemory()  # the loaded project, its state, the last build's carry-over
        self.memory.tree = TreeWatch(str(root))
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        assert self.memory.tree is not None
        self.memory.tree.start()
        path, fd = socket_address(self.state_dir, SOCKET_NAME)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a killed supervisor's socket: we hold resident.lock, so it is not live
            old = os.umask(0o077)  # only our user may connect (and SO_PEERCRED is checked too)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=path, limit=1 << 20)
            finally:
                os.umask(old)
        finally:
            os.close(fd)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.state_dir / SOCKET_NAME)
        await self.federation.stop()
        self.memory.close()

    async def idle(self, timeout_s: float) -> None:
        """Until no request is in progress (at most `timeout_s`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.busy += 1
        self._idle.clear()
        try:
            if not _same_user(writer):
                return
            if self.closing:
                writer.write(b'{"retry": true}\n')
                return
            try:
                request = json.loads(await reader.readline())
                argv, cwd = list(map(str, request["argv"])), str(request["cwd"])
            except (ValueError, KeyError, TypeError):
                return  # not our client: nothing to answer
            out = ForwardedStream(writer, "o", bool(request.get("out_tty")), int(request.get("columns") or 80))
            err = ForwardedStream(writer, "e", bool(request.get("err_tty")), int(request.get("columns") or 80))
            await self._run_while_connected(reader, _Reply(writer), argv, cwd, out, err)
        finally:
            self.last_used = time.monotonic()
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self.busy -= 1
            if not self.busy:
                self._idle.set()

    async def _run_while_connected(self, reader: asyncio.StreamReader, reply: _Reply, argv: list[str], cwd: str,
                                   out: ForwardedStream, err: ForwardedStream) -> None:
        """Run the build until it is done, or cancel it if the client goes away before its answer."""
        build = asyncio.create_task(self._build(reply, argv, cwd, out, err))
        gone = asyncio.create_task(reader.read())  # the client sends nothing more: EOF means it left
        try:
            await asyncio.wait({build, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not build.done() and not reply.sent:
                build.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build  # answered already: its last work (the no-op stamp) is not cut short
        if not build.cancelled() and (exc := build.exception()):
            log.error("build request %s failed", argv, exc_info=exc)
            err.write(f"majordomo: internal error in the resident build server: {exc!r} "
                      f"(see {self.state_dir / 'resident.log'})\n")
            await reply.exit(1)

    async def _build(self, reply: _Reply, argv: list[str], cwd: str, out: ForwardedStream,
                     err: ForwardedStream) -> None:
        from majordomo.cli import build_in_server

        if self._turn.locked():
            err.write("majordomo: waiting for another build of this project to finish\n")
        async with self._turn:
            later: list[Callable[[], Awaitable[None]]] = []
            code = await build_in_server(argv, cwd, out, err, self.federation, self.memory, later)
            await reply.exit(code, federation_failed=self._chefs_failed())
            # After the answer, still in our turn: the no-op stamp may wait a clock tick for the
            # outputs just written to age (majordomo/noop.py); the client need not wait for it.
            for work in later:
                await work()

    def _chefs_failed(self) -> bool:
        started = self._chefs_ready
        return started is not None and started.done() and not started.cancelled() and started.exception() is not None


class _Reply:
    """The end of one request's answer: its exit code, sent once."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = False

    async def exit(self, code: int, *, federation_failed: bool = False) -> None:
        """`federation_failed`: the local chefs could not start (the client keeps their logs)."""
        if self.sent:
            return
        self.sent = True
        frame: dict[str, object] = {"exit": code}
        if federation_failed:
            frame["federation_failed"] = True
        self.writer.write(json.dumps(frame).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    return uid == os.getuid()
