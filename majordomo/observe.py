"""Watching a federation: events, the chef registry, micro-service stats, server info, Prometheus text.

Shared by `majordomo status`, the dashboard and (for `render_prometheus`) anyone exposing metrics.
Everything here reads; nothing creates buckets or publishes, so looking never changes what is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from protocol import subjects
from protocol.messages import ChefInfo, Event, Ownership, decoder

BUCKET_READ_TIMEOUT_S = 5.0
CONSUMER_IDLE_S = 5.0

_event_decoder = msgspec.json.Decoder(Event)
_chef_decoder = decoder(ChefInfo)
_owner_decoder = decoder(Ownership)


# -- events ---------------------------------------------------------------------------------------

def decode_event(data: bytes) -> Event | None:
    """An Event from its JSON, or None: a malformed event from one pod must not stop a watcher."""
    try:
        return _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def subscribe_events(nc: NATS, federation: str, on_event: Callable[[Event], Awaitable[None] | None],
                           kind: str = ">") -> Subscription:
    """Call `on_event` for every event of the federation (or of one kind); undecodable ones are skipped."""

    async def handler(msg: Msg) -> None:
        event = decode_event(msg.data)
        if event is not None:
            result = on_event(event)
            if result is not None:
                await result

    return await nc.subscribe(subjects.events(federation, kind), cb=handler)


# -- registry and ownership -----------------------------------------------------------------------

async def read_bucket(nc: NATS, bucket: str, *, timeout_s: float = BUCKET_READ_TIMEOUT_S) -> dict[str, bytes] | None:
    """Every live key of a KV bucket in one ordered-consumer pass (not one request per key).

    None when the bucket does not exist: a reader never creates it, or it would fix its TTL.
    """
    js = nc.jetstream()
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return None
    # A watcher is an ephemeral consumer that outlives its unsubscribe by `inactive_threshold`;
    # the default (5 min) would pile up consumers under a dashboard that reads every 2 s.
    watcher = await kv.watchall(ignore_deletes=True, inactive_threshold=CONSUMER_IDLE_S)
    found: dict[str, bytes] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=timeout_s)
            if entry is None:  # the marker after the last current value
                break
            if entry.value:
                found[entry.key] = entry.value
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return found


async def read_chefs(nc: NATS, federation: str = subjects.DEFAULT_FEDERATION) -> list[ChefInfo]:
    """The chefs whose registry entries have not expired, sorted by id."""
    raw = await read_bucket(nc, subjects.chefs_bucket(federation)) or {}
    chefs: list[ChefInfo] = []
    for value in raw.values():
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            chefs.append(_chef_decoder.decode(value))
    return sorted(chefs, key=lambda c: c.id)


async def owners_by_digest(nc: NATS, federation: str = subjects.DEFAULT_FEDERATION) -> dict[str, frozenset[str]]:
    """The ownership map: digest -> owner pods (empty when the federation keeps none)."""
    found: dict[str, frozenset[str]] = {}
    for key, value in (await read_bucket(nc, subjects.owners_bucket(federation)) or {}).items():
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            found[key.replace(".", ":", 1)] = frozenset(_owner_decoder.decode(value).owners)  # kv_key, reversed
    return found


async def owned_bytes(nc: NATS, federation: str = subjects.DEFAULT_FEDERATION) -> dict[str, int] | None:
    """Bytes each pod owns according to the ownership bucket; None when the federation keeps none."""
    raw = await read_bucket(nc, subjects.owners_bucket(federation))
    if raw is None:
        return None
    totals: dict[str, int] = {}
    for value in raw.values():
        try:
            owned = _owner_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        for pod in owned.owners:
            totals[pod] = totals.get(pod, 0) + owned.size
    return totals


# -- NATS micro services and the server -----------------------------------------------------------

async def micro_gather(nc: NATS, verb: str, service: str, *, expect: int = 0, timeout_s: float = 1.0,
                       keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Scatter-gather `$SRV.<verb>.<service>`: stop once `expect` kept replies arrived, else at the timeout.

    Knowing how many chefs the registry lists lets the common case return without waiting out the
    timeout; the timeout only bounds the wait for a chef that is gone or slow. `keep` filters
    replies (services of other federations on the same NATS answer too).
    """
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def collect(msg: Msg) -> None:
        try:
            reply = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(reply, dict) and (keep is None or keep(reply)):
            replies.append(reply)
        if expect and len(replies) >= expect:
            enough.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SRV.{verb}.{service}", b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return replies


@dataclass
class ServerInfo:
    """The NATS server a connection is on, from the INFO it sent us."""

    url: str
    name: str = ""
    id: str = ""
    version: str = ""
    cluster: str = ""
    jetstream: bool = False
    known_servers: list[str] = field(default_factory=list)  # the pool, discovered cluster members included


def server_info(nc: NATS) -> ServerInfo:
    # nats-py keeps the server's INFO only in a private attribute; it is the one place it exists.
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    url = nc.connected_url
    return ServerInfo(
        url=url.geturl() if url else "",
        name=str(info.get("server_name", "")),
        id=str(info.get("server_id", "")),
        version=str(info.get("version", "")),
        cluster=str(info.get("cluster", "")),
        jetstream=bool(info.get("jetstream", False)),
        known_servers=[s.geturl() for s in nc.servers],
    )


# -- Prometheus text exposition format: shared with chefs, so it lives in artefacts/ -------------

from artefacts.metrics import (  # noqa: E402, F401 - re-exported for the dashboard and tests
    DEFAULT_BUCKETS,
    METRICS,
    Histogram,
    LabelKey,
    labels,
    render_prometheus,
)
