"""Chef leases: a chef holds a lease while its heartbeats keep arriving.

Chefs refresh their entry in the chefs KV bucket every couple of seconds. Each put is also an
ordinary NATS message on `$KV.<bucket>.<chef>`, so a plain subscription sees every heartbeat,
timed by this process's clock (no clock skew between hosts matters). A chef unheard-of for
longer than the lease, or one that deregistered, has lost its lease: the steps it was cooking
are dispatched elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from artefacts.natsutil import kv_deleted
from majordomo.latch import Latch

DEFAULT_LEASE_S = 10.0


class Leases:
    def __init__(self, nc: NATS, bucket: str, lease_s: float = DEFAULT_LEASE_S,
                 on_lost: Callable[[str, str], None] | None = None,
                 on_back: Callable[[bytes], None] | None = None) -> None:
        self.nc = nc
        self.bucket = bucket
        self.lease_s = lease_s
        self.on_lost = on_lost or (lambda _chef, _why: None)
        self.on_back = on_back or (lambda _registration: None)
        self._last_seen: dict[str, float] = {}
        self._lost: dict[str, Latch] = {}
        self._sub = None
        self._checker: asyncio.Task[None] | None = None

    async def start(self, chefs: Iterable[str], heard: Mapping[str, float] | None = None) -> None:
        """Hold a lease for each of `chefs`, dated by when the registry last heard of it (`heard`,
        time.monotonic) where it knows, else now: a chef that died just before the listing loses
        its lease a lease after its last beat."""
        now = time.monotonic()
        for chef in chefs:
            self._last_seen[chef] = (heard or {}).get(chef, now)
        self._sub = await self.nc.subscribe(f"$KV.{self.bucket}.>", cb=self._on_beat)
        self._checker = asyncio.create_task(self._check())

    async def stop(self) -> None:
        if self._checker:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def lost(self, chef: str) -> Latch:
        """A latch set once `chef` loses its current lease. It is never cleared: the attempts
        that waited on it stay ended (their late answers ignored); a chef whose heartbeats resume
        gets a new lease, with a new latch."""
        return self._lost.setdefault(chef, Latch())

    def alive(self, chef: str) -> bool:
        return not self.lost(chef).is_set()

    async def _on_beat(self, msg: Msg) -> None:
        chef = msg.subject.rsplit(".", 1)[-1]
        if kv_deleted(msg):
            self._expire(chef, "deregistered")
            return
        if self.lost(chef).is_set():  # back after an outage (NATS failover, a healed link)
            self._lost[chef] = Latch()
            self.on_back(msg.data)
        self._last_seen[chef] = time.monotonic()

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 4)  # a periodic clock check, not a wait for an event
            deadline = time.monotonic() - self.lease_s
            for chef, seen in list(self._last_seen.items()):
                if seen < deadline:
                    self._expire(chef, f"no heartbeat for {self.lease_s:g}s")

    def _expire(self, chef: str, why: str) -> None:
        event = self.lost(chef)
        if not event.is_set():
            event.set()
            self._last_seen.pop(chef, None)
            self.on_lost(chef, why)
