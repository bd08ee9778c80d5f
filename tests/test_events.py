"""Every state change of a build is an event anyone can watch on `<fed>.events.>`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
from conftest import Run, majordomo, write_project

RECIPE = """
[[step]]
name = "one"
inputs = ["a.txt"]
outputs = ["out/one.txt"]
command = "cp $< $@"

[[step]]
name = "two"
inputs = ["out/one.txt"]
outputs = ["out/two.txt"]
command = "cp $< $@"

[[step]]
name = "broken"
inputs = ["a.txt"]
outputs = ["out/broken.txt"]
command = "exit 1"
"""


async def _build_watching_events(project: Path, federation, *args: str) -> tuple[Run, list[dict]]:  # type: ignore[no-untyped-def]
    """Build against the federation while collecting every event, up to the build's last one."""
    nc = await nats.connect(federation.url, name="test-events")
    seen: list[dict] = []
    finished = asyncio.Event()

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        event = json.loads(msg.data)
        seen.append(event)
        if event["kind"] == "build.finished":
            finished.set()

    await nc.subscribe("cp.events.>", cb=collect)
    await nc.flush()
    try:
        run = await asyncio.to_thread(majordomo, project, "build", *args, "--nats", federation.url,
                                      env=federation.env)
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        await nc.close()
    return run, seen


async def test_build_publishes_its_story(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"a.txt": "x\n"})
    run, seen = await _build_watching_events(project, federation, "--json")
    assert run.code == 1
    kinds = [(e["kind"], e["step_id"]) for e in seen if e["source"].startswith("majordomo:")]
    assert ("build.started", "") in kinds and ("build.finished", "") in kinds
    for step in ("one", "two", "broken"):
        assert ("step.queued", step) in kinds and ("step.placed", step) in kinds
    placed = next(e for e in seen if e["kind"] == "step.placed" and e["step_id"] == "two")
    assert placed["chef_id"] in federation.ids and placed["detail"]["reason"]
    assert {c["chef"] for c in placed["detail"]["candidates"]} == set(federation.ids)
    chef_events = {(e["kind"], e["step_id"]) for e in seen if e["source"] in federation.ids}
    assert ("step.done", "two") in chef_events and ("step.failed", "broken") in chef_events
    summary = next(e for e in seen if e["kind"] == "build.finished")["detail"]
    assert summary["steps_run"] == 2 and summary["steps_failed"] == 1
    assert len({e["build_id"] for e in seen if e["source"].startswith("majordomo:")}) == 1


async def test_running_step_output_streams_as_step_log(tmp_path: Path, federation) -> None:
    recipe = """
[[step]]
name = "chatty"
inputs = ["a.txt"]
outputs = ["out/a.txt"]
command = "for i in 1 2 3; do echo progress-$$i; sleep 0.3; done; cp $< $@"
"""
    project = write_project(tmp_path / "p", recipe, {"a.txt": "x\n"})
    nc = await nats.connect(federation.url, name="test-log-stream")
    order: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        event = json.loads(msg.data)
        if event["step_id"] == "chatty":
            order.append((event["kind"], event["detail"].get("text", "")))
            if event["kind"] == "step.done":
                done.set()

    await nc.subscribe("cp.events.>", cb=collect)
    await nc.flush()
    try:
        run = await asyncio.to_thread(majordomo, project, "build", "--nats", federation.url, env=federation.env)
        assert run.code == 0, run.stderr
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await nc.close()
    logs = [text for kind, text in order if kind == "step.log"]
    kinds = [kind for kind, _ in order]
    assert len(logs) >= 2  # streamed while running, not only at the end
    assert kinds.index("step.log") < kinds.index("step.done")
    assert "".join(logs) == "progress-1\nprogress-2\nprogress-3\n"


async def test_cached_steps_are_published_up_to_a_cap_and_counted_at_the_end(tmp_path: Path, federation) -> None:
    """A big no-op-ish build must not flood the bus: the first CACHED_EVENTS_MAX cached steps are
    published, build.finished counts them all."""
    from majordomo.engine import CACHED_EVENTS_MAX

    count = CACHED_EVENTS_MAX + 20
    recipe = '[[rule]]\nname = "copy"\ninputs = ["src/%.txt"]\noutputs = ["out/%.txt"]\ncommand = "cp $< $@"\n' \
             '\n[[step]]\nname = "last"\ninputs = ["x.txt"]\noutputs = ["out/x.txt"]\ncommand = "cp $< $@"\n'
    project = write_project(tmp_path / "p", recipe, {"x.txt": "1\n", **{f"src/{i}.txt": f"{i}\n" for i in range(count)}})
    first = await asyncio.to_thread(majordomo, project, "build", "--nats", federation.url, env=federation.env)
    assert first.code == 0, first.stderr
    (project / "x.txt").write_text("2\n")  # one step runs, so the build reaches the federation
    run, seen = await _build_watching_events(project, federation)
    assert run.code == 0, run.stderr
    cached = [e for e in seen if e["kind"] == "step.cached"]
    assert len(cached) == CACHED_EVENTS_MAX
    summary = next(e for e in seen if e["kind"] == "build.finished")["detail"]
    assert summary["steps_cached"] == count and summary["steps_run"] == 1
