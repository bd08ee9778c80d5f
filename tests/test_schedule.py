"""Critical-path scheduling: the slot pool's order, the path lengths, and a real build's run order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import majordomo, write_project

from majordomo.schedule import Slots, critical_paths, estimate_s


async def test_waiters_are_served_highest_priority_first_then_in_arrival_order() -> None:
    slots = Slots(1)
    await slots.acquire()
    served: list[str] = []

    async def wait(name: str, priority: float) -> None:
        await slots.acquire(priority)
        served.append(name)

    waiting = {n: asyncio.create_task(wait(n, p)) for n, p in (("low", 1.0), ("high", 5.0), ("mid", 3.0),
                                                                ("mid2", 3.0))}
    await asyncio.sleep(0)  # every waiter is queued (no slot is free, so none can finish)
    assert served == [] and slots.free == 0
    for expected in (["high"], ["high", "mid"], ["high", "mid", "mid2"], ["high", "mid", "mid2", "low"]):
        slots.release()
        await asyncio.wait_for(waiting[expected[-1]], 5)
        assert served == expected
    slots.release()
    assert slots.free == 1


async def _held_with_two_waiting() -> tuple[Slots, asyncio.Task[None], asyncio.Task[None]]:
    """A one-slot pool, held, with a high-priority waiter and a low one queued behind it."""
    slots = Slots(1)
    await slots.acquire()
    high = asyncio.create_task(slots.acquire(9.0))
    low = asyncio.create_task(slots.acquire(1.0))
    await asyncio.sleep(0)
    return slots, high, low


async def test_a_cancelled_waiter_neither_takes_nor_loses_a_slot() -> None:
    slots, gone, stays = await _held_with_two_waiting()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release()  # skips the cancelled waiter
    await asyncio.wait_for(stays, 5)
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_after_its_grant_passes_the_slot_on() -> None:
    slots, granted, nxt = await _held_with_two_waiting()
    slots.release()  # grants `granted`, which has not resumed yet
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    await asyncio.wait_for(nxt, 5)  # the slot went on instead of being lost
    slots.release()
    assert slots.free == 1


def test_critical_path_is_own_cost_plus_the_longest_chain_after_it() -> None:
    #  a -> c -> d ;  b -> d ;  e alone
    names = ["a", "b", "c", "d", "e"]
    deps = {"a": [], "b": [], "c": [0], "d": [2, 1], "e": []}
    cost = {"a": 1.0, "b": 4.0, "c": 2.0, "d": 0.5, "e": 3.0}
    paths = dict(zip(names, critical_paths(names, lambda n: deps[n], lambda n: cost[n]), strict=True))
    assert paths == {"a": 3.5, "b": 4.5, "c": 2.5, "d": 0.5, "e": 3.0}


def test_unmeasured_steps_are_ordered_by_their_inputs_size() -> None:
    assert estimate_s(0.25, 10**9) == 0.25  # a measurement wins over any guess
    assert estimate_s(None, 8000) > estimate_s(None, 1000) > 0


STAMP = "date +%s%N > $@"


def _stamping_steps(names: list[str], slow: frozenset[str] | set[str] = frozenset()) -> str:
    """A step per name, `<name>.txt` -> `out/<name>` holding its start time; the `slow` ones then
    sleep 0.3 s."""
    return "".join(f"""
    [[step]]
    name = "{n}"
    inputs = ["{n}.txt"]
    outputs = ["out/{n}"]
    command = "{STAMP}{'; sleep 0.3' if n in slow else ''}"
    """ for n in names)


def _run_order(project: Path, names: list[str]) -> list[str]:
    """The steps in the order they started: each output holds its step's start time."""
    return sorted(names, key=lambda n: int((project / "out" / n).read_text()))


def test_one_slot_runs_the_longest_chain_first_measured_or_guessed(tmp_path: Path) -> None:
    """With one slot, steps run one at a time, so their start times give the scheduler's order.

    First build: nothing measured, so the steps with big inputs (guessed long) go first, and
    `slow` (tiny input) last. Then, inputs changed: `slow` was measured at ~0.3 s, the others at a
    few ms, so `slow` goes first: in the resident build server (which the first build started and ran in); then
    with the state deleted, from the server's memory; then after `majordomo stop` (no memory), from
    the durations recorded in the state."""
    names = ["slow", "wide-1", "wide-2", "wide-3"]
    recipe = _stamping_steps(names, slow={"slow"})

    def inputs(round_: int) -> dict[str, str]:
        return {"slow.txt": f"{round_}\n", **{f"{n}.txt": f"{round_}\n" + "x" * 60_000 for n in names[1:]}}

    project = write_project(tmp_path / "p", recipe, inputs(1))
    first = majordomo(project, "build", "-j", "1", "--json")
    assert first.code == 0, first.stderr
    assert first.summary["steps_run"] == 4
    assert _run_order(project, names)[-1] == "slow"

    for round_, forget in ((2, ""), (3, "state"), (4, "memory")):
        if forget == "state":  # as after `rm -rf .majordomo/state.db*`: only the server's memory knows
            for db in (project / ".majordomo").glob("state.db*"):
                db.unlink()
        elif forget == "memory":  # a new resident server: only the state knows
            assert majordomo(project, "stop").code == 0
        write_project(project, recipe, inputs(round_))
        again = majordomo(project, "build", "-j", "1", "--json")
        assert again.code == 0, again.stderr
        assert again.summary["steps_run"] == 4
        assert _run_order(project, names)[0] == "slow", f"round {round_}"


def test_a_long_step_with_work_behind_it_starts_before_short_independent_ones(tmp_path: Path) -> None:
    """Recipe order puts the short steps first; the chain `big` -> `after-big` is the critical path."""
    recipe = _stamping_steps(["short-a", "short-b", "short-c", "big"]) + """
    [[step]]
    name = "after-big"
    inputs = ["out/big"]
    outputs = ["out/after-big"]
    command = "cp $< $@"
    """
    files = {f"short-{c}.txt": "x\n" for c in "abc"} | {"big.txt": "y" * 50_000}
    project = write_project(tmp_path / "p", recipe, files)
    run = majordomo(project, "build", "-j", "1", "--json", "out/short-a", "out/short-b", "out/short-c",
                    "out/after-big")
    assert run.code == 0, run.stderr
    started_big = int((project / "out/after-big").read_text())
    assert all(started_big < int((project / f"out/short-{c}").read_text()) for c in "abc")
