"""The latch that dispatched steps share to learn of a lost lease or a reconnection."""

from __future__ import annotations

import asyncio

from majordomo.latch import Latch


def test_waiters_share_one_future_and_see_a_set_before_or_after() -> None:
    async def run() -> None:
        early = Latch()
        early.set()  # set before anyone asked for its future
        assert early.is_set() and early.future.done()

        latch = Latch()
        waiters = [asyncio.ensure_future(asyncio.shield(latch.future)) for _ in range(3)]
        done, _ = await asyncio.wait({latch.future}, timeout=0.01)
        assert not done and not latch.is_set()
        waiters[0].cancel()  # one waiter giving up leaves the latch to the others
        await asyncio.sleep(0)
        assert not latch.future.cancelled()
        latch.set()
        await asyncio.gather(*waiters[1:])
        assert latch.future.done() and latch.future is latch.future

    asyncio.run(run())
