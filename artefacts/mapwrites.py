"""Writes to the federation's shared maps that a NATS failover must not lose.

Ownership adds and action-cache puts are advisory for the build that makes them (its own state has
them), but other pods and later builds rely on the map: an owner missing from it makes a producer
run again for nothing. When a cluster node dies, its streams elect new leaders, and that can take
longer than any retry a step should wait for (5 s request timeouts, 503s, "no response from
stream"). So a write the cluster cannot take now is kept, in order, and replayed once it answers
again: at once when the connection comes back (`nudge`), else on a capped back-off. `close` flushes
with a bound and reports, once, whatever is still unwritten.

While anything waits, new writes queue behind it instead of trying first, so a step's result is
never held up by a failover and an action-cache entry never lands before the owners it names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from artefacts.ownership import FederationMaps
from protocol.messages import OutputRef

FLUSH_S = 10.0  # how long stopping waits for the cluster to take what is still queued
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True)
class Write:
    what: str  # for reports: "owner chef-3 of sha256:0123abcd…"
    attempt: Callable[[], Awaitable[None]]  # one try, no retries of its own
    owner: tuple[str, str] | None = None  # (digest, pod) of an ownership add


def _short(digest: str) -> str:
    return digest if len(digest) <= 20 else digest[:19] + "…"


class MapWrites:
    def __init__(self, maps: FederationMaps) -> None:
        self.maps = maps
        self._queue: collections.deque[Write] = collections.deque()
        self._last_error = ""
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._replayer: asyncio.Task[None] | None = None
        self._closed = False

    # -- what to write ----------------------------------------------------------------------------

    def owner(self, digest: str, size: int, pod: str) -> Write:
        return Write(f"owner {pod} of {_short(digest)}",
                     lambda: self.maps.add_owner(digest, size, pod, retry_for_s=0), owner=(digest, pod))

    def action(self, action_key: str, outputs: list[OutputRef]) -> Write:
        return Write(f"action-cache entry {_short(action_key)}",
                     lambda: self.maps.put_action(action_key, outputs, retry_for_s=0))

    # -- writing ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def write(self, *groups: list[Write]) -> str:
        """Write the groups in order, each group's writes at once. Returns "" if all were made now,
        else why not: the rest are kept and replayed (never raises)."""
        if self._closed:
            return "closed"
        for n, group in enumerate(groups):
            if self._queue:  # the cluster is away: keep the order, do not wait for it here
                self._keep([w for g in groups[n:] for w in g])
                return self._last_error or "earlier writes are still waiting"
            if len(group) == 1:  # the usual group: awaited as is, where gather would wrap it in a task
                results = [await self._try(group[0])]
            else:
                results = await asyncio.gather(*(self._try(w) for w in group))
            failed = [w for w, ok in zip(group, results, strict=True) if not ok]
            if failed:
                self._keep([*failed, *(w for g in groups[n + 1:] for w in g)])
                return self._last_error
        return ""

    async def _try(self, write: Write) -> bool:
        """One attempt; False if the write must wait for the cluster.

        Every failure waits, whatever its type: while a stream has no leader, even "not found" can
        come back (a KV read of a stream that is not there for now). One that never passes is
        reported when the writes are closed."""
        try:
            await write.attempt()
        except Exception as exc:
            self._last_error = repr(exc)
            return False
        return True

    def _keep(self, writes: list[Write]) -> None:
        self._queue.extend(writes)
        self._drained.clear()
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay())

    def forget_owner(self, digest: str, pod: str) -> None:
        """Drop a kept ownership add that no longer holds (the pod is giving that digest up), so a
        replay cannot list it again after its removal."""
        self._queue = collections.deque(w for w in self._queue if w.owner != (digest, pod))
        if not self._queue:
            self._drained.set()

    def nudge(self) -> None:
        """The cluster may answer again (the connection came back): replay now, not after the back-off."""
        self._wake.set()

    async def _replay(self) -> None:
        delay = 0.1
        while self._queue:
            write = self._queue[0]
            self._wake.clear()
            if not await self._try(write):
                with contextlib.suppress(TimeoutError):  # a back-off, cut short by a reconnect
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if self._queue and self._queue[0] is write:  # forget_owner may have dropped it meanwhile
                self._queue.popleft()
            delay = 0.1
        self._drained.set()

    # -- the end ----------------------------------------------------------------------------------

    async def flush(self, within_s: float = FLUSH_S) -> bool:
        """Wait (at most `within_s`) until every kept write is made; True if none is left."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), within_s)
        return not self._queue

    async def close(self, within_s: float = FLUSH_S) -> str:
        """Flush (bounded), stop replaying, and say once what was never written ("" if all was)."""
        if self._closed:
            return ""
        if self._queue:
            self.nudge()  # try at once rather than at the end of a back-off
            await self.flush(within_s)
        self._closed = True
        if self._replayer and not self._replayer.done():
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        lost = [w.what for w in self._queue]
        self._queue.clear()
        if not lost:
            return ""
        listed = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        return (f"{len(lost)} write(s) to the federation's shared maps were not made "
                f"(last error: {self._last_error}): {listed}")
