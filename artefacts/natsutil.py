"""NATS helpers every pod uses: a fast-failing connect, and the embedded nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from artefacts.embedded_nats import EmbeddedNats as EmbeddedNats  # re-exported: one place to import from
from artefacts.embedded_nats import nats_server_binary as nats_server_binary

CONNECT_DEADLINE_S = 3.0
log = logging.getLogger(__name__)
T = TypeVar("T")
# A KV operation may time out while a NATS cluster elects a new stream leader (a node died):
# try again for about as long as a lease lasts before giving up.
RETRY_FOR_S = 10.0
# What JetStream answers while a leader is being elected: requests time out (5 s each) or find no
# responder, the API says 503 "temporarily unavailable" (10008), and a KV write (a publish) finds
# nobody to store it (NoStreamResponseError) until the stream's new leader has subscribed and its
# interest has reached our node. A fresh cluster answers like this for its first seconds too.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError, TimeoutError)
# A chef starting against a cluster that is still forming waits this long for JetStream to answer.
JETSTREAM_READY_S = 60.0


async def retrying(operation: Callable[[], Awaitable[T]], *, for_s: float = RETRY_FOR_S) -> T:
    """Run a JetStream operation, retrying transient failures (a stream or meta leader election)
    with back-off for at most `for_s` seconds."""
    deadline = asyncio.get_running_loop().time() + for_s
    delay = 0.1
    while True:
        try:
            return await operation()
        except TRANSIENT:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            await asyncio.sleep(delay)  # a back-off between retries, not a wait for an event
            delay = min(delay * 2, 1.0)



class NatsUnreachable(ConnectionError):
    """The NATS server at a URL could not be reached within the deadline."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach NATS at {url}: {reason}")
        self.url = url


class JetStreamUnavailable(ConnectionError):
    """NATS answers, but its JetStream (the registry and the shared maps) did not within the wait."""

    def __init__(self, url: str, waited_s: float, reason: str) -> None:
        super().__init__(f"JetStream at {url} did not answer within {waited_s:g}s ({reason}); "
                         "is JetStream enabled, and does the cluster have a quorum of its nodes?")
        self.url = url


async def when_jetstream_ready(url: str, setup: Callable[[], Awaitable[T]], *,
                               for_s: float = JETSTREAM_READY_S) -> T:
    """Run `setup` (open buckets, make a first write) until JetStream answers it, at most `for_s`
    seconds in all, or raise JetStreamUnavailable naming the URL.

    A cluster that just formed answers JetStream only once it has elected its metadata leader, and
    a bucket's first write succeeds only once that stream has elected its own leader."""
    last = "still unavailable"
    deadline = asyncio.get_running_loop().time() + for_s

    async def attempt() -> T:
        nonlocal last
        try:
            return await setup()
        except TRANSIENT as exc:
            described = exc.description if isinstance(exc, nats.js.errors.APIError) else str(exc)
            last = described or type(exc).__name__
            raise

    try:
        async with asyncio.timeout_at(deadline):  # setup's own retries must not outlast the wait
            return await retrying(attempt, for_s=for_s)
    except TRANSIENT:  # also the timeout's own TimeoutError
        raise JetStreamUnavailable(url, for_s, last) from None


async def connect(url: str, name: str, *, deadline_s: float = CONNECT_DEADLINE_S,
                  on_reconnect: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """Connect within `deadline_s` or raise NatsUnreachable.

    nats-py's defaults retry an unreachable server for about two minutes; a user waiting on
    `majordomo build` deserves one clear line instead. Once connected, reconnects are generous
    so that a NATS node restarting mid-build does not fail the build.
    """
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        log.info("%s: disconnected from NATS %s", name, nc.connected_url.netloc if nc.connected_url else "")

    async def on_reconnected() -> None:  # operators read failovers in the logs
        log.warning("%s: reconnected to NATS %s", name, nc.connected_url.netloc if nc.connected_url else "")
        if on_reconnect is not None:
            await on_reconnect()

    nc = NATS()
    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: any node will do
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=servers,
                name=name,
                connect_timeout=1,
                # Notice a silently dead server within a few seconds (default: ~4 minutes), well
                # inside a chef's lease, so the connection fails over before leases lapse.
                ping_interval=2,
                max_outstanding_pings=2,
                # nats-py loops inside the first connect until a server is tried more than
                # max_reconnect_attempts times: keep that to one quick retry.
                reconnect_time_wait=0.1,
                max_reconnect_attempts=1,
                error_cb=on_error,
                reconnected_cb=on_reconnected,
                disconnected_cb=on_disconnect,
            ),
            timeout=deadline_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        reason = errors[-1] if errors else (str(exc) or type(exc).__name__)
        raise NatsUnreachable(url, reason) from None
    # Be patient from now on: nats-py reads these options on every disconnect.
    nc.options["max_reconnect_attempts"] = 120
    nc.options["reconnect_time_wait"] = 0.5
    return nc


NO_SUITABLE_PEERS = 10005  # JetStream's error code: not enough JetStream nodes for the replicas asked
STREAM_NAME_IN_USE = 10058  # JetStream's error code: the stream exists with another configuration


class BucketBeingCreated(nats.js.errors.ServiceUnavailableError):
    """Another pod is creating the bucket and JetStream cannot show it yet: transient, like a 503."""


async def kv_bucket(nc: NATS, bucket: str, *, ttl: float | None = None, history: int = 1):  # type: ignore[no-untyped-def]
    """Open a JetStream KV bucket, creating it on first use (creation with one config is idempotent).

    On a NATS cluster it is replicated to as many nodes as there are, up to 3, so losing a node
    loses no registry entry, owner or cached result; on a single server, one replica. Nodes that run
    without JetStream (mixed mode) hold no replica, so fewer are asked for when no more can be placed."""
    js = nc.jetstream()

    async def open_or_create():  # type: ignore[no-untyped-def]
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            for replicas in range(max(1, min(3, len(nc.servers))), 0, -1):
                try:
                    return await js.create_key_value(bucket=bucket, ttl=ttl, history=history, replicas=replicas)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code == STREAM_NAME_IN_USE:  # another pod made it first, maybe with fewer replicas
                        try:
                            return await js.key_value(bucket)
                        except nats.js.errors.BucketNotFoundError:
                            # ... and its creation is not applied yet where we asked ("stream not found"):
                            # seen when chefs start together against a mixed-mode cluster. Open it again.
                            raise BucketBeingCreated(description=f"bucket {bucket} is being created") from None
                    if exc.err_code != NO_SUITABLE_PEERS or replicas == 1:
                        raise
                    log.info("bucket %s: no room for %d replicas, asking for %d", bucket, replicas, replicas - 1)

    # A cluster that just formed answers JetStream requests only once it has elected a leader.
    return await retrying(open_or_create, for_s=30.0)


def local_address_towards(url: str) -> str | None:
    """This host's address on the route to a NATS server (a UDP connect sends nothing), so a pod
    can advertise an SFTP address its peers reach; None when the server is on loopback."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url.split(",")[0].strip()).hostname or ""
    if not host or host in ("localhost", "::1") or host.startswith("127."):
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 4222))
            return probe.getsockname()[0]
    except OSError:
        return None


def kv_deleted(msg: Msg) -> bool:
    """Whether a message on a KV bucket's subject (`$KV.<bucket>.<key>`) removes its key."""
    return (msg.headers or {}).get("KV-Operation", "") in ("DEL", "PURGE")


async def kv_keys(nc: NATS, bucket: str) -> list[str]:
    """The keys a KV bucket holds now, from the stream's per-subject counts.

    nats-py's `KeyValue.keys()` makes a watcher consumer per call that lingers for minutes (a
    server allows 1,000), and can report "no keys" before the delivered ones are processed; a
    stream-info request creates nothing and answers in one round trip."""
    js = nc.jetstream()
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    try:
        info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    except nats.js.errors.NotFoundError:
        return []
    subjects = (info.state.subjects or {}) if info.state else {}
    return [subject[len(prefix):] for subject, count in subjects.items() if count]
