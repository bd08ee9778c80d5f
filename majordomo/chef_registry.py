"""The chefs registered in a federation, kept current from the registry's own messages.

Listing the registry costs a stream-info round trip plus a KV get per chef (~1.2 ms for two local
chefs), and a resident build server asks at every build. But every put and delete in the chefs
bucket is also an ordinary NATS message on `$KV.<bucket>.<chef>` (chefs put their entry at every
heartbeat), so one subscription keeps a mirror, and a build reads it for free.

The mirror is listed in full when it starts and again after the connection comes back from a
failover (messages sent while we were away are lost). The bucket drops an entry by its max age
without any message, so the mirror drops an entry unheard-of for the same time, by this process's
clock. An entry only a listing saw is dated by the heartbeat time it carries (an impossible age,
from hosts' clocks that disagree, counts as fresh), so a chef that died just before a listing ages
out with the bucket's copy, not a TTL later. Leases (majordomo/leases.py) start from the dates
heard on this clock (`heard`), never from another host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from artefacts.natsutil import kv_deleted, kv_keys
from protocol import subjects
from protocol.messages import ChefInfo, decoder

_decode_chef = decoder(ChefInfo)


class ChefRegistry:
    def __init__(self, nc: NATS, federation: str, kv: Any, ttl_s: float = subjects.REGISTRY_TTL_S) -> None:
        self.nc = nc
        self.bucket = subjects.chefs_bucket(federation)
        self.kv = kv
        self.ttl_s = ttl_s
        # chef id -> (registration, when heard, whether a message of its own said so: our clock)
        self._entries: dict[str, tuple[ChefInfo, float, bool]] = {}
        self._sub: Any = None
        self._listed = False
        self._generation = 0  # moved by `relist`: a listing under way when it moves does not count
        self._heard_while_listing: set[str] | None = None
        self._lock = asyncio.Lock()

    async def chefs(self) -> list[ChefInfo]:
        """The chefs registered now."""
        if self._sub is None or not self._listed:
            async with self._lock:
                if self._sub is None:  # subscribe before listing: nothing falls between the two
                    self._sub = await self.nc.subscribe(f"$KV.{self.bucket}.>", cb=self._on_message)
                if not self._listed:
                    await self._list()
        now = time.monotonic()
        for key in [k for k, (_, heard, _) in self._entries.items() if now - heard >= self.ttl_s]:
            del self._entries[key]  # aged out of the bucket too
        return [info for info, _, _ in self._entries.values()]

    def heard(self) -> dict[str, float]:
        """Chef id -> when (time.monotonic) a registration message of its own last came; chefs
        only a listing saw are not here (their dates come from another host's clock)."""
        return {key: heard for key, (_, heard, exact) in self._entries.items() if exact}

    def relist(self) -> None:
        """Messages may have been lost (a reconnect): list the registry again at the next read."""
        self._listed = False
        self._generation += 1

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _list(self) -> None:
        generation = self._generation
        self._heard_while_listing = set()
        try:
            listed: dict[str, ChefInfo] = {}
            for key in await kv_keys(self.nc, self.bucket):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError,
                                         msgspec.DecodeError):
                    entry = await self.kv.get(key)
                    if entry.value:
                        listed[key] = _decode_chef.decode(entry.value)
            now, wall = time.monotonic(), time.time()
            # A message that came while we listed is newer than what the listing read; an entry
            # only listed is as old as its heartbeat says (or as its last message, if newer).
            heard = self._heard_while_listing
            kept = {key: value for key, value in self._entries.items() if key in heard}
            for key, info in listed.items():
                if key not in heard:
                    known = self._entries.get(key)
                    age = wall - info.heartbeat_at
                    if not 0.0 <= age < self.ttl_s:
                        age = 0.0  # the bucket still holds it, so the clocks disagree: take it as fresh
                    if known is not None and known[1] >= now - age:
                        kept[key] = (info, known[1], known[2])
                    else:
                        kept[key] = (info, now - age, False)
            self._entries = kept
            self._listed = generation == self._generation
        finally:
            self._heard_while_listing = None

    async def _on_message(self, msg: Msg) -> None:
        key = msg.subject[len(self.bucket) + 5:]  # after "$KV.<bucket>."
        if self._heard_while_listing is not None:
            self._heard_while_listing.add(key)
        if kv_deleted(msg) or not msg.data:
            self._entries.pop(key, None)
            return
        try:
            self._entries[key] = (_decode_chef.decode(msg.data), time.monotonic(), True)
        except msgspec.DecodeError:
            self._entries.pop(key, None)
