"""The dashboard's HTTP server: one page, a Server-Sent Events stream of model patches, a JSON snapshot.

A few dozen lines of asyncio instead of a web framework. Nothing here awaits a browser: patches are
written without draining, and a browser that falls behind is disconnected (its EventSource
reconnects and starts again from a fresh snapshot), so a slow tab never slows a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from majordomo.dashboard.model import DashboardModel
from majordomo.dashboard.page import PAGE
from protocol import subjects
from protocol.messages import Event

log = logging.getLogger("majordomo.dashboard")

FLUSH_INTERVAL_S = 0.1  # patches are coalesced: at most ten a second, however busy the federation
REGISTRY_INTERVAL_S = 2.0  # the chefs' heartbeat period
STATS_EVERY = 3  # registry reads per $SRV.STATS round
KEEPALIVE_S = 15.0
MAX_CLIENT_BUFFER = 8 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
_encode = msgspec.json.Encoder().encode


class _Client:
    """One page's event stream."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def send(self, event: str, data: bytes) -> bool:
        """Queue an SSE message; False when the client is gone or too far behind to keep."""
        transport = self.writer.transport
        if self.writer.is_closing() or transport.get_write_buffer_size() > MAX_CLIENT_BUFFER:
            return False
        self.writer.write(b"event: " + event.encode() + b"\ndata: " + data + b"\n\n")
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class DashboardServer:
    """Serves the dashboard of one federation on host:port; `start()`, then `url`, then `stop()`."""

    def __init__(self, nats_url: str, federation: str = subjects.DEFAULT_FEDERATION, host: str = "127.0.0.1",
                 port: int = 0, *, nc: NATS | None = None) -> None:
        self.nats_url = nats_url
        self.federation = federation
        self.host = host
        self.port = port
        self.model = DashboardModel(federation)
        self._nc = nc
        self._own_nc = nc is None
        self._server: asyncio.Server | None = None
        self._sub: Subscription | None = None
        self._clients: set[_Client] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        from artefacts.natsutil import connect
        from majordomo.observe import server_info, subscribe_events

        if self._nc is None:
            self._nc = await connect(self.nats_url, f"majordomo:dashboard:{self.federation}")
        try:
            self._sub = await subscribe_events(self._nc, self.federation, self._on_event)
            await self._refresh_quietly(stats=True)  # the first page load already shows the chefs
            self.model.set_server(_server_dict(server_info(self._nc)))
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except BaseException:
            await self._close_nats()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._poll_registry())
        self._spawn(self._keepalive())

    async def stop(self) -> None:
        self._stopping.set()
        if self._flush_handle:
            self._flush_handle.cancel()
        if self._server:
            self._server.close()
        for client in list(self._clients):
            client.close()
        self._clients.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await self._close_nats()

    async def _close_nats(self) -> None:
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def __aenter__(self) -> DashboardServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- federation side --------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self.model.apply(event)
        if event.kind == "chef.joined":
            self._spawn(self._refresh_quietly(stats=False))  # its kinds, slots and tools, now
        elif event.kind == "build.finished":
            self._spawn(self._refresh_quietly(stats=True))  # the chefs' counters moved: show them now
        self._schedule_flush()

    async def _refresh_registry(self, *, stats: bool) -> None:
        from majordomo.observe import micro_gather, read_chefs, server_info

        assert self._nc
        started = time.monotonic()
        chefs = await read_chefs(self._nc, self.federation)
        self.model.set_chefs(chefs, read_started=started)
        if stats and chefs:
            ids = {c.id for c in chefs}
            replies = await micro_gather(
                self._nc, "STATS", subjects.CHEF_SERVICE_NAME, expect=len(chefs), timeout_s=1.0,
                keep=lambda r: (r.get("metadata") or {}).get("chef_id") in ids
                and (r.get("metadata") or {}).get("federation", self.federation) == self.federation)
            self.model.set_stats(replies)
        self.model.set_server(_server_dict(server_info(self._nc)))  # after a reconnect it may be another
        self._schedule_flush()

    async def _refresh_quietly(self, *, stats: bool) -> None:
        try:
            await self._refresh_registry(stats=stats)
        except Exception as exc:  # NATS away for a moment: keep the page, try again next round
            log.warning("dashboard: reading the chef registry failed: %s", exc or type(exc).__name__)

    async def _poll_registry(self) -> None:
        # Registry entries expire silently (KV TTL), so presence is re-read at the heartbeat rate.
        rounds = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), REGISTRY_INTERVAL_S)
            if self._stopping.is_set():
                return
            rounds += 1
            await self._refresh_quietly(stats=rounds % STATS_EVERY == 0)

    # -- page side --------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._stopping.is_set():
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        patch = self.model.take_patch()
        if patch is not None and self._clients:
            self._broadcast("patch", _encode(patch))

    def _broadcast(self, event: str, data: bytes) -> None:
        for client in list(self._clients):
            if not client.send(event, data):
                self._clients.discard(client)
                client.close()

    async def _keepalive(self) -> None:
        # A comment line keeps proxies from timing the stream out and finds dead connections.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), KEEPALIVE_S)
            for client in list(self._clients):
                if client.writer.is_closing():
                    self._clients.discard(client)
                else:
                    client.writer.write(b": keepalive\n\n")

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await _respond(writer, 400, "text/plain", b"bad request\n")
                return
            method, target, _version = parts
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if not self._host_allowed(headers.get("host", "")):
                # A page elsewhere could make a browser ask us via a DNS name it controls (DNS
                # rebinding); only the loopback names we serve on are answered.
                await _respond(writer, 403, "text/plain", b"forbidden host\n")
                return
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, "text/plain", b"method not allowed\n", extra={"Allow": "GET, HEAD"})
                return
            path = urlsplit(target).path
            if path in ("/", "/index.html"):
                await _respond(writer, 200, "text/html; charset=utf-8", PAGE.encode(), head=method == "HEAD")
            elif path == "/events":
                await self._stream(reader, writer)
            elif path == "/api/state":
                await _respond(writer, 200, "application/json", _encode(self.model.snapshot()), head=method == "HEAD")
            elif path == "/api/history":
                await _respond(writer, 200, "application/json", _encode(self.model.history()),
                               head=method == "HEAD")
            else:
                await _respond(writer, 404, "text/plain", b"not found\n")
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _host_allowed(self, host_header: str) -> bool:
        host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        host = host.strip("[]").lower()
        return host in {"127.0.0.1", "localhost", "::1", self.host.lower()}

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\nretry: 1000\n\n")
        client = _Client(writer)
        # The snapshot takes pending changes with it; send it first so no patch precedes it.
        self._flush()
        client.send("snapshot", _encode(self.model.snapshot()))
        self._clients.add(client)
        try:
            await writer.drain()
            while await reader.read(4096):  # a browser sends nothing more; EOF means it left
                pass
        finally:
            self._clients.discard(client)


def _server_dict(info: Any) -> dict[str, Any]:
    return {"url": info.url, "name": info.name, "version": info.version, "cluster": info.cluster,
            "jetstream": info.jetstream, "known_servers": info.known_servers, "at": time.time()}


async def _respond(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *,
                   head: bool = False, extra: dict[str, str] | None = None) -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}[status]
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
               "Connection": "close", "X-Content-Type-Options": "nosniff", **(extra or {})}
    writer.write(f"HTTP/1.1 {status} {reason}\r\n".encode()
                 + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
                 + (b"" if head else body))
    await writer.drain()


async def serve_dashboard(nats_url: str, federation: str = subjects.DEFAULT_FEDERATION, host: str = "127.0.0.1",
                          port: int = 0, *, nc: NATS | None = None) -> DashboardServer:
    """Start a dashboard (connecting to NATS, or on the given connection) and return it; `stop()` ends it."""
    server = DashboardServer(nats_url, federation, host, port, nc=nc)
    await server.start()
    return server
