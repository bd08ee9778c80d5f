"""A one-way flag that any number of waiters can wait on without a task each."""

from __future__ import annotations

import asyncio


class Latch:
    """Like an `asyncio.Event` that is never cleared, but its `future` can be handed straight to
    `asyncio.wait`: waiting on an Event takes a task per waiter (created, then cancelled), which
    for a lease or a reconnection watched by every dispatched step was a tenth of the MajorDomo's
    event-loop work. Waiters must not cancel the shared future."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None  # made on first use: needs the running loop
        self._set = False

    @property
    def future(self) -> asyncio.Future[None]:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self._set:
                self._future.set_result(None)
        return self._future

    def set(self) -> None:
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._set
