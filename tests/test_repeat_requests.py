"""A run request asked again (its answer lost in a NATS failover) is answered, never cooked twice.

The multi-host tests (test_multihost.py) show the whole story across a real NATS failover; these pin
the chef's half on one machine: the same attempt asked twice, concurrently or after its answer, gets
the same answer from one cooking, while a new attempt of the step cooks again.
"""

from __future__ import annotations

import asyncio

import nats
from conftest import srv_gather

from protocol import subjects
from protocol.messages import StepRequest, StepResult, decoder, encode, headers

# Random bytes: a second cooking could not come out with the same digest.
RANDOM = StepRequest(step_id="rand", action_key="k-rand", kind="shell", command="head -c 32 /dev/urandom > out.bin",
                     inputs=[], outputs=["out.bin"], pods=[], build_id="b-repeat", timeout_s=30)


async def _ask(nc: nats.NATS, chef: str, request: StepRequest) -> StepResult:
    reply = await nc.request(subjects.chef_run(subjects.DEFAULT_FEDERATION, chef), encode(request),
                             timeout=30, headers=headers())
    return decoder(StepResult).decode(reply.data)


async def _steps_cooked(nc: nats.NATS, chef: str) -> int:
    stats = next(s for s in await srv_gather(nc, "$SRV.STATS.computepods-chef", 2) if s["metadata"]["chef_id"] == chef)
    run = next(e for e in stats["endpoints"] if e["name"] == "run")
    return run["data"]["steps_ok"] + run["data"]["steps_failed"]


async def test_a_repeated_request_is_answered_from_one_cooking(federation) -> None:
    chef = federation.ids[0]
    nc = await nats.connect(federation.url, name="test-repeat")
    try:
        together = await asyncio.gather(_ask(nc, chef, RANDOM), _ask(nc, chef, RANDOM))
        later = await _ask(nc, chef, RANDOM)
        assert all(r.ok for r in (*together, later)), [r.message for r in together]
        digests = {r.outputs[0].digest for r in (*together, later)}
        assert len(digests) == 1, digests
        assert await _steps_cooked(nc, chef) == 1

        # The next attempt of the same step is new work: it cooks (and so gets other random bytes).
        again = await _ask(nc, chef, StepRequest(**{**_fields(RANDOM), "attempt": 2}))
        assert again.ok and again.outputs[0].digest not in digests
        assert await _steps_cooked(nc, chef) == 2
    finally:
        await nc.close()


def _fields(request: StepRequest) -> dict:
    return {f: getattr(request, f) for f in request.__struct_fields__}
