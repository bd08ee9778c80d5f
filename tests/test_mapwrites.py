"""Writes to the federation's shared maps survive NATS being away for longer than any retry: they are
kept and replayed once JetStream answers again (artefacts/mapwrites.py). Real nats-servers throughout:
a standalone one that is killed and started again, and a 3-node cluster that loses its quorum in the
middle of a real build (a MajorDomo and a chef process)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, start_chef, stop_procs, write_project
from natscluster import LoopbackCluster, Node, restart, standalone

from artefacts.keys import load_or_create_key
from artefacts.mapwrites import MapWrites
from artefacts.natsutil import connect, kv_keys
from artefacts.ownership import FederationMaps
from protocol import subjects
from protocol.messages import OutputRef

D1, D2, D3 = (f"sha256:{n:064x}" for n in (1, 2, 3))
OUTS = [OutputRef(path="build/a.o", digest=D1, size=10)]


async def _close(nc: Any) -> None:
    with contextlib.suppress(OSError):  # nats-py may trip over the socket of a server it saw die
        await nc.close()


async def _replaying_writes(url: str) -> tuple[Any, FederationMaps, MapWrites]:
    """A connection, its shared maps and a write queue that replays when the connection comes back."""
    holder: list[MapWrites] = []

    async def on_reconnect() -> None:
        for writes in holder:
            writes.nudge()

    nc = await connect(url, "test-mapwrites", on_reconnect=on_reconnect)
    try:
        maps = await FederationMaps(nc).open()
    except BaseException:
        await _close(nc)
        raise
    holder.append(MapWrites(maps))
    return nc, maps, holder[0]


@pytest.fixture
async def solo(tmp_path: Path) -> AsyncIterator[Node]:
    server = await standalone(tmp_path / "nats")
    yield server
    await server.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LoopbackCluster]:
    nodes = await LoopbackCluster(tmp_path / "cluster").start()
    yield nodes
    await nodes.stop()


async def test_writes_made_while_nats_is_down_are_replayed_when_it_is_back(solo: Node) -> None:
    nc, maps, writes = await _replaying_writes(solo.url)
    try:
        assert await writes.write([writes.owner(D3, 5, "chef-z")]) == ""  # NATS up: written at once

        await solo.kill()
        why = await writes.write([writes.owner(D1, 10, "chef-a"), writes.owner(D2, 20, "chef-b")],
                                 [writes.action("k1", OUTS)])
        assert why and writes.pending == 3, why  # both owners failed; the action waits behind them
        # While those wait, a new write queues behind them at once instead of trying (and timing out).
        assert await writes.write([writes.owner(D1, 10, "chef-c")]) and writes.pending == 4

        await restart(solo)
        assert await writes.flush(30), f"{writes.pending} writes still waiting"  # replayed on reconnect
        assert (await maps.owners(D1)).owners == ["chef-a", "chef-c"]  # type: ignore[union-attr]
        assert (await maps.owners(D2)).owners == ["chef-b"]  # type: ignore[union-attr]
        assert (await maps.owners(D3)).owners == ["chef-z"]  # type: ignore[union-attr]
        assert await maps.get_action("k1") == OUTS
        assert await writes.close() == ""
    finally:
        await _close(nc)


async def test_close_reports_what_was_never_written(solo: Node) -> None:
    nc = await connect(solo.url, "test-mapwrites")
    try:
        writes = MapWrites(await FederationMaps(nc).open())
        await solo.kill()
        await writes.write([writes.owner(D1, 10, "chef-a")], [writes.action("k1", OUTS)])
        report = await writes.close(1.0)  # bounded: NATS does not come back
        assert report.startswith("2 write(s) to the federation's shared maps were not made"), report
        assert f"owner chef-a of {D1[:19]}" in report and "action-cache entry k1" in report, report
        assert await writes.close() == ""  # said once
        assert await writes.write([writes.owner(D2, 1, "chef-b")]) == "closed" and writes.pending == 0
    finally:
        await _close(nc)


async def test_a_forgotten_owner_is_not_replayed(solo: Node) -> None:
    # A chef that evicts (or quarantines) a digest while its ownership add still waits must not be
    # listed again by a late replay.
    nc, maps, writes = await _replaying_writes(solo.url)
    try:
        await solo.kill()
        await writes.write([writes.owner(D1, 10, "chef-a"), writes.owner(D2, 10, "chef-a")])
        writes.forget_owner(D1, "chef-a")
        assert writes.pending == 1
        await restart(solo)
        assert await writes.flush(30)
        assert await maps.owners(D1) is None
        assert (await maps.owners(D2)).owners == ["chef-a"]  # type: ignore[union-attr]
    finally:
        await _close(nc)


# Two steps, each held by a gate (a FIFO the test writes a line to) so the test decides when each
# result reaches the MajorDomo: the first while the cluster has no quorum, the second once it has.
GATED = """
[[step]]
name = "first"
outputs = ["build/first.txt"]
command = "read line < {gate1}; echo first > $@"

[[step]]
name = "second"
inputs = ["build/first.txt"]
outputs = ["build/second.txt"]
command = "read line < {gate2}; cat $< > $@"
"""


async def test_a_build_records_every_owner_after_the_cluster_lost_its_quorum(cluster: LoopbackCluster,
                                                                              tmp_path: Path) -> None:
    n1, n2, n3 = cluster.nodes
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    for gate in gates:
        os.mkfifo(gate)
    # Held open for reading and writing: a line written waits in the pipe until the step reads it.
    fds = [os.open(gate, os.O_RDWR) for gate in gates]
    key = tmp_path / "keys" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    (tmp_path / "chefs").mkdir()
    # Everyone talks to n1, which stays up: steps and answers travel; only JetStream loses its quorum.
    chef = await asyncio.to_thread(start_chef, n1.url, tmp_path / "chefs" / "chef-a", "chef-a", key,
                                   "--slots", "1", "--no-sandbox")  # the gates are outside any sandbox
    nc = await connect(n1.url, "test-observer")
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(json.loads(msg.data))

    async def wait_event(kind: str, step: str) -> None:
        async with asyncio.timeout(60):
            while True:
                event = await events.get()
                if event["kind"] == kind and event["step_id"] == step:
                    return

    md: asyncio.subprocess.Process | None = None
    try:
        await nc.subscribe(subjects.events(subjects.DEFAULT_FEDERATION), cb=on_event)
        probe = await FederationMaps(nc).open()
        project = write_project(tmp_path / "p", GATED.format(gate1=gates[0], gate2=gates[1]), {})
        md = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "majordomo.cli", "build", "-C", str(project), "--json", "--nats", n1.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
            env={**os.environ, "MAJORDOMO_KEY": str(key)})
        await wait_event("step.running", "first")
        await n2.kill()
        await n3.kill()
        os.write(fds[0], b"go\n")
        # Its ownership and action-cache writes cannot be made: kept (before the fix: dropped after
        # a 10 s retry, with this same event).
        await wait_event("federation.degraded", "first")

        await cluster.restart(n2)
        await cluster.restart(n3)
        # A quorum again once the test's own writes to both maps go through (bounded retries).
        await probe.add_owner(D3, 1, "probe", retry_for_s=60)
        await probe.put_action("probe", [], retry_for_s=60)
        os.write(fds[1], b"go\n")
        async with asyncio.timeout(60):
            _out, err = await md.communicate()
        assert md.returncode == 0, err.decode()[-2000:]
        assert (project / "build/second.txt").read_text() == "first\n"

        first = "sha256:" + hashlib.sha256(b"first\n").hexdigest()
        owners = await probe.owners(first)
        assert owners is not None and "chef-a" in owners.owners, (owners, err.decode()[-2000:])
        # Both steps' results are in the shared action cache (besides the probe's entry).
        assert len(await kv_keys(nc, subjects.actions_bucket(subjects.DEFAULT_FEDERATION))) == 3
    finally:
        if md and md.returncode is None:
            md.kill()
            await md.wait()
        await _close(nc)
        await asyncio.to_thread(stop_procs, [chef])
        for fd in fds:
            os.close(fd)

