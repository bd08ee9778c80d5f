"""Run requests are idempotent: a repeat of one joins the running step or gets the kept answer.

A step's answer is a core-NATS reply. One published while the MajorDomo's connection fails over to
another NATS node is lost, so the MajorDomo asks again while the chef's lease holds (and always after
it reconnects). The repeat must not cook the step a second time: it waits for the same cooking, or,
when that already ended, gets the same encoded answer. Answers are kept for a bounded time and number.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from protocol.messages import StepRequest

KEEP_S = 600.0  # longer than any MajorDomo keeps asking (its lease plus a failover)
KEEP_MAX = 1024

AttemptKey = tuple[str, str, int, str]


def attempt_key(step: StepRequest) -> AttemptKey:
    """One attempt of one step in one build: what a repeated request names again."""
    return (step.build_id, step.step_id, step.attempt, step.action_key)


class Answers:
    def __init__(self, keep_s: float = KEEP_S, keep_max: int = KEEP_MAX) -> None:
        self._keep_s = keep_s
        self._keep_max = keep_max
        self._cooking: dict[AttemptKey, asyncio.Future[bytes]] = {}
        self._kept: OrderedDict[AttemptKey, tuple[float, bytes]] = OrderedDict()
        self.repeats = 0  # requests answered without cooking again

    def begin(self, key: AttemptKey) -> asyncio.Future[bytes] | None:
        """None when this attempt is new (the caller cooks it and calls `finish`); otherwise a
        future of the answer the first request will get (done already if it was answered)."""
        self._expire()
        kept = self._kept.get(key)
        if kept is not None:
            self.repeats += 1
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            done.set_result(kept[1])
            return done
        cooking = self._cooking.get(key)
        if cooking is not None:
            self.repeats += 1
            return cooking
        self._cooking[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: AttemptKey, answer: bytes) -> None:
        self._kept[key] = (time.monotonic(), answer)
        self._kept.move_to_end(key)
        waiting = self._cooking.pop(key, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)
        self._expire()

    def abandon(self, key: AttemptKey) -> None:
        """The cooking ended without an answer (the chef is stopping): repeats get none either."""
        waiting = self._cooking.pop(key, None)
        if waiting is not None:
            waiting.cancel()

    def _expire(self) -> None:
        horizon = time.monotonic() - self._keep_s
        while self._kept:
            key, (at, _answer) = next(iter(self._kept.items()))
            if at >= horizon and len(self._kept) <= self._keep_max:
                break
            del self._kept[key]
