"""Chefs starting while JetStream is not ready yet: a NATS cluster that is still forming (they wait
for it), and a server without JetStream at all (one clear line, no traceback). Real nats-servers,
real chefs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import REPO, majordomo, write_project
from natscluster import LoopbackCluster, standalone

from artefacts.natsutil import connect, kv_keys
from chefs.runtime import Chef, ChefConfig
from protocol import subjects

CHEFS = 6


@pytest.mark.parametrize("without_jetstream", [(), ("n1",)], ids=["all-jetstream", "mixed-mode"])
async def test_chefs_start_while_the_cluster_forms(tmp_path: Path, without_jetstream: tuple[str, ...]) -> None:
    # The chefs start the moment every node is up, before the cluster has elected its metadata leader:
    # they open the same buckets at once (creating them races: in mixed mode some ask for 3 replicas,
    # are refused, and meet the stream another made with 2) and register into a stream whose leader
    # is still being elected. Each must wait for JetStream, not die on the first answer.
    cluster = LoopbackCluster(tmp_path / "cluster", without_jetstream=without_jetstream)
    chefs = [Chef(ChefConfig(id=f"chef-{n}", nats_url=cluster.nodes[n % 3].url, kinds=["shell"],
                             home=tmp_path / f"chef-{n}", slots=1, sandbox=False, hand_over=False))
             for n in range(CHEFS)]
    try:
        await cluster.start(meta_leader=False)
        started = await asyncio.gather(*(c.start() for c in chefs), return_exceptions=True)
        failed = {c.config.id: repr(r) for c, r in zip(chefs, started, strict=True) if isinstance(r, BaseException)}
        assert not failed, failed
        nc = await connect(cluster.urls, "test-observer")
        try:
            assert sorted(await kv_keys(nc, subjects.chefs_bucket("cp"))) == [f"chef-{n}" for n in range(CHEFS)]
        finally:
            await nc.close()
    finally:
        await asyncio.gather(*(c.stop(drain_s=5) for c in chefs), return_exceptions=True)
        await cluster.stop()


async def test_a_chef_says_in_one_line_when_jetstream_never_answers(tmp_path: Path) -> None:
    server = await standalone(tmp_path / "nats", jetstream=False)
    try:
        chef = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chefs.cli", "--nats", server.url, "--id", "chef-x", "--home", str(tmp_path / "chef"),
            "--kind", "shell", "--jetstream-wait", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
        try:
            out, err = await asyncio.wait_for(chef.communicate(), 30)
        except TimeoutError:
            chef.kill()
            await chef.wait()
            raise AssertionError("the chef still waits for JetStream after 30 s") from None
    finally:
        await server.stop()
    text = err.decode()
    assert chef.returncode == 1 and b"ready" not in out, (chef.returncode, text)
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"chef: JetStream at {server.url} did not answer within 2s"), last


def test_chef_cli_takes_a_jetstream_wait() -> None:
    from chefs.cli import config_from_args, parse_args

    args = parse_args(["--nats", "nats://127.0.0.1:4222", "--kind", "shell", "--id", "c", "--jetstream-wait", "5"])
    assert config_from_args(args).jetstream_wait_s == 5.0


async def test_a_build_says_in_one_line_when_the_federation_has_no_jetstream(tmp_path: Path) -> None:
    """`--nats` at a server without JetStream: one line naming it (after the failover wait), exit 2."""
    project = write_project(tmp_path / "p", '[[step]]\nname = "a"\ninputs = ["x"]\noutputs = ["y"]\n'
                                            'command = "cp $< $@"\n', {"x": "1\n"})
    server = await standalone(tmp_path / "nats", jetstream=False)
    try:
        run = await asyncio.to_thread(majordomo, project, "build", "--nats", server.url)
    finally:
        await server.stop()
    assert run.code == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"JetStream at {server.url} did not answer" in run.stderr.strip().splitlines()[-1], run.stderr
    assert not (project / "y").exists()
