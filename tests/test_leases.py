"""A chef killed mid-step loses its lease; the step is dispatched again elsewhere and the build
completes with correct outputs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from conftest import REPO, Run, start_chef, stop_procs, write_project

RECIPE = """
[[step]]
name = "slow"
inputs = ["in.txt"]
outputs = ["out/slow.txt"]
command = "sleep 1; tr a-z A-Z < $< > $@"
"""


@pytest.fixture
def quick_lease_chefs(nats_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from artefacts.keys import load_or_create_key

    key = tmp_path / "fedkey" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    (tmp_path / "chefs").mkdir()
    procs = {cid: start_chef(nats_url, tmp_path / "chefs" / cid, cid, key, "--slots", "1", "--heartbeat", "0.2")
             for cid in ("chef-a", "chef-b")}
    try:
        yield nats_url, key, procs
    finally:
        stop_procs(list(procs.values()))


async def test_killed_chef_loses_its_step_to_another(tmp_path: Path, quick_lease_chefs) -> None:
    url, key, procs = quick_lease_chefs
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "hello\n"})
    nc = await nats.connect(url, name="test-leases")
    running: asyncio.Queue[str] = asyncio.Queue()
    seen: list[dict] = []

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        event = json.loads(msg.data)
        seen.append(event)
        if event["kind"] == "step.running":
            running.put_nowait(event["chef_id"])

    await nc.subscribe("cp.events.>", cb=on_event)
    await nc.flush()
    build = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "majordomo.cli", "build", "-C", str(project), "--json", "--nats", url,
        "--lease", "1.5", stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "MAJORDOMO_KEY": str(key)},
    )
    try:
        victim = await asyncio.wait_for(running.get(), 30)
        procs[victim].send_signal(signal.SIGKILL)  # mid-step: the chef is cooking right now
        out, err = await asyncio.wait_for(build.communicate(), 60)
    finally:
        if build.returncode is None:
            build.kill()
        await nc.close()
    run = Run(build.returncode or 0, out.decode(), err.decode())
    assert run.code == 0, run.stderr
    survivor = "chef-b" if victim == "chef-a" else "chef-a"
    assert run.summary["chefs"] == [{"id": survivor, "steps": 1}]
    assert (project / "out/slow.txt").read_text() == "HELLO\n"
    lost = [e for e in seen if e["kind"] == "chef.lease_lost"]
    assert [e["chef_id"] for e in lost] == [victim]
    recovered = next(e for e in seen if e["kind"] == "step.recovered")
    assert recovered["detail"]["history"] == [f"attempt 1 on {victim}: lease lost"]


def test_no_chef_left_fails_with_the_history(tmp_path: Path, quick_lease_chefs) -> None:
    url, key, procs = quick_lease_chefs
    for proc in procs.values():
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "hello\n"})
    result = subprocess.run(
        [sys.executable, "-m", "majordomo.cli", "build", "-C", str(project), "--json", "--nats", url,
         "--lease", "1"], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "MAJORDOMO_KEY": str(key)})
    assert result.returncode == 1, result.stderr
    assert "slow" in result.stderr and "attempt 1 on chef-" in result.stderr
    assert not (project / "out/slow.txt").exists()
