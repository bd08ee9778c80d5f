"""Which ready step gets the next free slot: the one with the longest (estimated) path to the end.

Steps wait for slots in priority order, not arrival order. A step's priority is its critical path:
its own expected duration plus the longest chain of work that waits for it. The build's wall time
is at least its longest chain, so starting that chain first keeps the end from waiting on one step
that started late (a big test file compiled after thirty small ones, its link and test run behind
it). Expected durations are what each step took last time; a step never seen is estimated from
the bytes of its inputs, which is crude but orders a big source before small ones until the first
build measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

# Unmeasured steps: a fixed cost plus their inputs' bytes at a compiler's pace (gcc -O2 takes
# ~0.1 s for 8 KB of C). Only the order these give matters, never the values.
UNMEASURED_BASE_S = 0.01
UNMEASURED_BYTES_PER_S = 100_000.0

Unit = TypeVar("Unit")


def estimate_s(measured_s: float | None, input_bytes: int) -> float:
    """A step's expected duration: its last measured one, else a guess from its inputs' size."""
    if measured_s is not None:
        return measured_s
    return UNMEASURED_BASE_S + input_bytes / UNMEASURED_BYTES_PER_S


def critical_paths(units: Sequence[Unit], deps_of: Callable[[Unit], Sequence[int]],
                   cost_of: Callable[[Unit], float]) -> list[float]:
    """Each unit's cost plus the longest chain of costs of the units that depend on it.

    `units` are in dependency order (a unit after everything it needs); `deps_of` gives the
    indexes of a unit's dependencies among them (dependencies outside the list do not run)."""
    dependants: list[list[int]] = [[] for _ in units]
    for index, unit in enumerate(units):
        for dep in deps_of(unit):
            dependants[dep].append(index)
    paths = [0.0] * len(units)
    for index in range(len(units) - 1, -1, -1):
        paths[index] = cost_of(units[index]) + max((paths[d] for d in dependants[index]), default=0.0)
    return paths


class Slots:
    """A counting semaphore whose waiters are served highest priority first, then in arrival order."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def free(self) -> int:
        return self._free

    async def acquire(self, priority: float = 0.0) -> None:
        if self._free > 0:  # then nobody waits: `release` hands a slot to a waiter before freeing it
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():  # a cancelled waiter's future is done: skip it
                future.set_result(None)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: float = 0.0) -> AsyncIterator[None]:
        """`async with slots.slot(priority):` holds one slot for the block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
