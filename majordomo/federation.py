"""Joining a federation: connect to NATS (or start the embedded one with local chefs), list the chefs,
and run the MajorDomo's own pod (an SFTP server for sources, a puller for final outputs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from artefacts.keys import check_public_key_line, ensure_key
from artefacts.mapwrites import FLUSH_S, MapWrites
from artefacts.natsutil import EmbeddedNats, NatsUnreachable, connect, kv_bucket, local_address_towards
from artefacts.ownership import FederationMaps
from artefacts.samehost import workspace_access
from artefacts.sftp_client import Puller
from artefacts.sftp_listener import LazyArtefactServer
from artefacts.store import Store
from majordomo.chef_registry import ChefRegistry
from majordomo.latch import Latch
from majordomo.local_chefs import EMBEDDED_CHEFS, FederationError, LocalChefs
from majordomo.resident import embedded_keys, join_or_start, resident_idle_s, stop_resident
from protocol import subjects
from protocol.messages import ChefInfo, Pod, SftpEndpoint


class Federation:
    """A connection to a federation, embedded or external, plus this MajorDomo's pod."""

    def __init__(self, project_root: Path, pod_id: str, nats_url: str | None,
                 federation: str = subjects.DEFAULT_FEDERATION,
                 resolve: Callable[[str], Path | None] | None = None,
                 sftp_listen: tuple[str, int] = ("127.0.0.1", 0), advertise_host: str = "",
                 resident: bool = True, attach_url: str | None = None,
                 joining: asyncio.Future[str] | None = None, chefs_ready: asyncio.Future[None] | None = None) -> None:
        """`joining`: `join_or_start` of the resident federation, already under way (see
        `Build._federation`), which `start` then awaits instead of starting its own.
        `chefs_ready`: with `attach_url`, the start of the federation's local chefs, still under
        way; `start` ends once they are registered (or raises their FederationError)."""
        self.root = project_root
        self._joining = joining
        self._chefs_ready = chefs_ready
        # The resident supervisor's own build server: the embedded federation is its own, already up.
        self.attach_url = attach_url
        # Builds join the project's resident embedded federation; a watch session, which keeps its
        # own up for its whole life anyway, starts a private one and leaves no process behind.
        self.resident = resident
        self.state_dir = project_root / ".majordomo"
        self.pod_id = pod_id
        self.nats_url = nats_url
        self.federation = federation
        self.resolve: Callable[[str], Path | None] = resolve or (lambda _d: None)
        self.sftp_listen = sftp_listen
        self.advertise_host = advertise_host
        self.nc: NATS | None = None
        self.embedded: EmbeddedNats | None = None
        self.local_chefs: LocalChefs | None = None
        self.sftp: LazyArtefactServer | None = None
        self.puller: Puller | None = None
        self.pod: Pod | None = None
        self._registry: ChefRegistry | None = None
        self._maps: dict[str, FederationMaps] = {}  # federation name -> its opened shared maps
        self.dashboard = None  # the live page, when asked for; lives as long as this federation
        # Set (and replaced by a fresh one) each time the NATS connection comes back after a failover:
        # replies published while we were away are lost, so whoever waits for one asks again.
        self.reconnected = Latch()
        self._writes: MapWrites | None = None

    async def open_dashboard(self, port: int) -> str:
        """Serve the dashboard on 127.0.0.1:port (0: any) on this connection; say where."""
        from majordomo.dashboard import serve_dashboard

        assert self.nc
        self.dashboard = await serve_dashboard(self.nc.connected_url.geturl() if self.nc.connected_url else "",
                                               self.federation, "127.0.0.1", port, nc=self.nc)
        print(f"dashboard: {self.dashboard.url}", file=sys.stderr, flush=True)
        return self.dashboard.url

    @property
    def is_embedded(self) -> bool:
        return self.nats_url is None

    async def start(self) -> None:
        key_path, authorized = await embedded_keys(self.state_dir)
        # Public lines only: asyncssh is imported when SFTP is first used (artefacts/sftp_listener.py).
        fed_key_line = await asyncio.to_thread(ensure_key, key_path)
        host_key = self.state_dir / "keys" / "host"
        host_key_line = await asyncio.to_thread(ensure_key, host_key)
        extra = os.environ.get("MAJORDOMO_AUTHORIZED_KEYS")
        lines = [fed_key_line]
        if extra and Path(extra).exists():
            for number, line in enumerate(Path(extra).read_text().splitlines(), 1):
                if line.strip():
                    try:
                        check_public_key_line(line.strip(), f"MAJORDOMO_AUTHORIZED_KEYS ({extra}), line {number}")
                    except ValueError as exc:
                        raise FederationError(str(exc)) from None
                    lines.append(line.strip())
        # Through an indirection: `watch` points one long-lived server at each new build's files.
        self.sftp = LazyArtefactServer(lambda digest: self.resolve(digest), host_key, host_key_line, lines)
        listen = self.sftp_listen
        advertise = self.advertise_host
        if self.nats_url and listen[0] == "127.0.0.1" and not advertise:
            # Chefs elsewhere cannot reach our loopback: serve on the address that routes to NATS.
            towards = local_address_towards(self.nats_url)
            if towards:
                listen, advertise = (towards, listen[1]), towards
        host, _port = await self.sftp.start(*listen)
        # Same-host chefs read sources straight from the workspace by their project path (copied and
        # verified, never linked): see artefacts.samehost.
        local = workspace_access(self.root)
        self.pod = Pod(id=self.pod_id, sftp=self.sftp.endpoint(advertise or host, local=local))
        # Final outputs are fetched straight into the workspace; the store only holds temp files.
        self.puller = Puller(key_path, Store(self.state_dir / "store"))
        url = self.nats_url
        idle_s = resident_idle_s(url, resident=self.resident, attach_url=self.attach_url)
        if url is None and self.attach_url:
            # Not named "majordomo:": the supervisor counts those connections as builds in progress.
            self.nc = await connect(self.attach_url, f"resident:{self.pod_id}", on_reconnect=self._on_reconnect)
        elif idle_s > 0:
            self.nc = await self._join_resident(str(key_path), idle_s)
        else:
            if url is None:
                # One set of local chefs per project: their stores are its .majordomo/chefs/.
                await asyncio.to_thread(stop_resident, self.state_dir)
                run_dir = self.state_dir / "run"
                shutil.rmtree(run_dir, ignore_errors=True)  # a killed run's server state is not reused
                # Tied to this process: a SIGKILLed build or watch leaves no server behind.
                self.embedded = EmbeddedNats(run_dir / "nats", tied_to_parent=True)
                url = await self.embedded.start()
            self.nc = await connect(url, f"majordomo:{self.pod_id}", on_reconnect=self._on_reconnect)
        try:
            chefs_kv = await kv_bucket(self.nc, subjects.chefs_bucket(self.federation), ttl=subjects.REGISTRY_TTL_S)
            self._registry = ChefRegistry(self.nc, self.federation, chefs_kv)
        except (nats.errors.Error, TimeoutError) as exc:
            where = self.nc.connected_url.geturl() if self.nc.connected_url else (url or "the NATS server")
            raise FederationError(f"JetStream at {where} did not answer ({type(exc).__name__}): the federation's "
                                  "registry needs a NATS server with JetStream enabled") from None
        if self.embedded:
            self.local_chefs = LocalChefs(self.state_dir, url, key_path, authorized, tied_to_parent=True)
            await self.local_chefs.start(EMBEDDED_CHEFS)
        if self._chefs_ready is not None:
            await asyncio.shield(self._chefs_ready)  # shared by every build that waits for it

    async def _join_resident(self, key: str, idle_s: float) -> NATS:
        """Join the project's resident federation, starting it if none runs with our code and key;
        one that does not answer is stopped and started afresh, once."""
        for last_try in (False, True):
            try:
                joining, self._joining = self._joining, None
                url = await (joining or asyncio.to_thread(join_or_start, self.state_dir, key, idle_s))
            except (TimeoutError, RuntimeError) as exc:
                raise FederationError(str(exc)) from None
            try:
                return await connect(url, f"majordomo:{self.pod_id}", on_reconnect=self._on_reconnect)
            except NatsUnreachable:
                if last_try:
                    raise
                await asyncio.to_thread(stop_resident, self.state_dir)
        raise AssertionError("unreachable")

    async def _on_reconnect(self) -> None:
        if self._registry:
            self._registry.relist()
        came_back, self.reconnected = self.reconnected, Latch()
        came_back.set()
        if self._writes:
            self._writes.nudge()

    def map_writes(self, maps: FederationMaps) -> MapWrites:
        """Writes to the shared maps that a failover must not lose, kept for as long as this connection:
        a watch session's builds share them, and they are flushed when the federation stops."""
        if self._writes is None:
            self._writes = MapWrites(maps)
        return self._writes

    async def chefs(self) -> list[ChefInfo]:
        """The chefs registered now (their registry entries expire when heartbeats stop)."""
        assert self._registry
        return await self._registry.chefs()

    def chefs_heard(self) -> dict[str, float]:
        """Chef id -> when (time.monotonic) a registry message of its own last came."""
        return self._registry.heard() if self._registry else {}

    async def maps(self, federation: str) -> FederationMaps:
        """The federation's shared maps, opened once for as long as this connection."""
        assert self.nc
        if federation not in self._maps:
            self._maps[federation] = await FederationMaps(self.nc, federation).open()
        return self._maps[federation]

    async def stop(self) -> None:
        """Stop what was started; safe to call twice, and `start` may follow (watch retries)."""
        if self._joining is not None:  # `start` failed before it joined: the resident stays up, unused
            self._joining.cancel()
            self._joining = None
        if self._writes:  # while NATS (maybe our embedded server) is still up
            writes, self._writes = self._writes, None
            unwritten = await writes.close(FLUSH_S)
            if unwritten:
                print(f"majordomo: {unwritten}; other builds may run those steps again", file=sys.stderr, flush=True)
        if self.dashboard:
            with contextlib.suppress(Exception):
                await self.dashboard.stop()
            self.dashboard = None
        if self.local_chefs:
            await self.local_chefs.stop()
        if self._registry:
            await self._registry.close()
            self._registry = None
        self._maps.clear()
        if self.nc:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.embedded:
            await self.embedded.stop()
        if self.puller:
            await self.puller.close()
        if self.sftp:
            await self.sftp.stop()
        self.local_chefs = self.nc = self.embedded = self.puller = self.sftp = None
        self.pod = None


def endpoint_of(chef: ChefInfo) -> SftpEndpoint:
    return chef.sftp
