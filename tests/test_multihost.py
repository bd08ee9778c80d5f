"""Builds across hosts: network namespaces on one machine, real nats-servers, chef processes and the
MajorDomo CLI, each on its own host (198.18.0.N). Nothing here listens on or talks to any other address.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import write_project
from netns import (
    REPO,
    Events,
    Net,
    Watched,
    finish_build,
    harness,
    make_key,
    nats_tool,
    nats_url,
    net_fixture,  # noqa: F401 - provides the `net` fixture
    start_chefs,
    start_majordomo,
    start_nats,
    start_nats_cluster,
    store_files,
)

from protocol import subjects
from protocol.messages import Ownership, decoder

NATS_HOST, MD_HOST, CHEF_HOSTS, CLUSTER = 1, 2, (3, 4, 5), (1, 6, 7)
BUILD_S = 60  # bound on a healthy build (they take a few seconds)
RECOVER_S = 25  # bound on a build that must ride out a fault: a 10 s lease, a retry and the rest (2x)
_RAN = re.compile(r"\] ran +(\S+) on (\S+) ")  # the MajorDomo's line for a step whose result it committed
_CACHED = re.compile(r"\] cached +(\S+)")

FANOUT = """
[[rule]]
name = "sum"
inputs = ["src/%.bin"]
outputs = ["build/%.sum"]
timeout = 20
# The pause is the workload (a compile's worth of time), so steps overlap; no test waits on it.
command = "sleep {pause}; sha256sum $< > $@"

[[step]]
name = "all"
inputs = ["build/*.sum"]
outputs = ["build/all.txt"]
timeout = 20
command = "cat $^ > $@"
"""


def _sources(n: int, size: int, seed: int = 4) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"src/s{i}.bin": rng.randbytes(size) for i in range(n)}


def _project(root: Path, sources: dict[str, bytes], pause: float) -> Path:
    project = write_project(root, FANOUT.format(pause=pause), {})
    for rel, data in sources.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(data)
    return project


def _sum_line(rel: str, data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()}  {rel}\n"


def _expected_all(sources: dict[str, bytes]) -> str:
    return "".join(_sum_line(rel, data) for rel, data in sorted(sources.items()))


@dataclass
class Fed:
    url: str
    key: Path
    servers: dict[int, Watched]
    chefs: dict[int, Watched]
    events: Events


def _federation(net: Net, tmp: Path, *, cluster: bool = False, chef_server: int = NATS_HOST,
                watch_server: int = NATS_HOST, watch_url: str = "", without_jetstream: tuple[int, ...] = ()) -> Fed:
    """NATS on host 1 (or a cluster on 1, 6, 7), chefs with one slot each on hosts 3-5, an event watcher
    (running on watch_server's host, connected to watch_url if given)."""
    servers = start_nats_cluster(net, CLUSTER, tmp / "nats", without_jetstream=without_jetstream) if cluster else {
        NATS_HOST: start_nats(net, NATS_HOST, tmp / "nats")}
    key = make_key(tmp / "keys")
    url = nats_url(net, chef_server)
    chefs = start_chefs(net, CHEF_HOSTS, url, key, tmp, "--slots", "1")
    events = Events(net, watch_server, watch_url or nats_url(net, watch_server), tmp / "events.log")
    return Fed(url, key, servers, chefs, events)


def _listeners(net: Net, host: int) -> list[str]:
    """Local addresses of the TCP listeners on a host."""
    return [line.split()[3] for line in net.check_output(host, ["ss", "-ltnH"]).splitlines() if line.strip()]


def test_build_across_hosts(net: Net, tmp_path: Path) -> None:
    fed = _federation(net, tmp_path)
    sources = _sources(6, 256 * 1024)
    project = _project(tmp_path / "p", sources, pause=0.5)

    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key)
    fed.events.wait(BUILD_S, kind="step.running")
    # A step is running, so the MajorDomo is up: its SFTP server, like NATS and every chef's, listens on
    # its host's 198.18 address only (never loopback or a wildcard).
    for host in (NATS_HOST, MD_HOST, *CHEF_HOSTS):
        listening = _listeners(net, host)
        assert listening and all(a.startswith(net.addr(host) + ":") for a in listening), (host, listening)
    run = finish_build(md, BUILD_S)

    assert run.code == 0, run.stderr
    s = run.summary
    assert (s["ok"], s["steps_run"], s["steps_failed"]) == (True, 7, 0)
    assert (project / "build/all.txt").read_text() == _expected_all(sources)
    assert not (project / "build/s0.sum").exists()  # intermediates stay with the chefs
    # One slot each and six steps ready at once: every chef cooked.
    assert sorted(c["id"] for c in s["chefs"]) == [f"chef-{h}" for h in CHEF_HOSTS]
    assert s["bytes_pulled"] >= sum(len(d) for d in sources.values())

    # Inputs reached the chefs over the network only: each chef counted bytes it pulled over SFTP, and
    # its store holds copies of its own, not hardlinks to the workspace (hosts share a filesystem here).
    stats = nats_tool(net, NATS_HOST, "stats", fed.url, "3")
    workspace_inodes = {(project / rel).stat().st_ino for rel in sources}
    for host in CHEF_HOSTS:
        assert stats[f"chef-{host}"]["run"]["bytes_pulled"] > 0, stats
        held = store_files(tmp_path / f"chef-{host}" / "store")
        assert held and not {p.stat().st_ino for p in held.values()} & workspace_inodes
    # The aggregate step needed the sums other chefs made: chef-to-chef pulls happened.
    aggregator = next(e["chef_id"] for e in fed.events.all() if e["kind"] == "step.done" and e["step_id"] == "all")
    sums = {hashlib.sha256(_sum_line(rel, d).encode()).hexdigest() for rel, d in sources.items()}
    held = store_files(tmp_path / aggregator / "store")
    assert sums <= {d.split(":", 1)[1] for d in held}


def test_second_majordomo_on_another_host_reuses_the_federation(net: Net, tmp_path: Path) -> None:
    fed = _federation(net, tmp_path)
    sources = _sources(6, 64 * 1024)
    first = _project(tmp_path / "p", sources, pause=0)
    assert finish_build(start_majordomo(net, MD_HOST, first, fed.url, fed.key), BUILD_S).code == 0
    # Another checkout of the same project on another pod (host 6), with no state of its own.
    second = _project(tmp_path / "checkout-2" / "p", sources, pause=0)
    run = finish_build(start_majordomo(net, 6, second, fed.url, fed.key), BUILD_S)
    assert run.code == 0, run.stderr
    s = run.summary
    assert (s["steps_run"], s["steps_cached"]) == (0, 7), s
    assert (second / "build/all.txt").read_text() == _expected_all(sources)
    # It pulled the final output and nothing else: no source travelled, no chef cooked.
    assert s["files_pulled"] == 1 and s["bytes_pulled"] == len(_expected_all(sources)), s


def test_build_through_nats_cluster(net: Net, tmp_path: Path) -> None:
    # Chefs talk to node 6, the MajorDomo to node 7, the watcher to node 1: every message crosses a route.
    fed = _federation(net, tmp_path, cluster=True, chef_server=6, watch_server=1)
    sources = _sources(6, 64 * 1024)
    project = _project(tmp_path / "p", sources, pause=0.2)
    run = finish_build(start_majordomo(net, MD_HOST, project, nats_url(net, 7), fed.key), BUILD_S)
    assert run.code == 0, run.stderr
    assert run.summary["steps_run"] == 7
    assert (project / "build/all.txt").read_text() == _expected_all(sources)
    assert len({e["chef_id"] for e in fed.events.all() if e["kind"] == "step.done"}) == 3


def test_cluster_kv_buckets_are_replicated(net: Net, tmp_path: Path) -> None:
    servers = start_nats_cluster(net, CLUSTER, tmp_path / "nats")
    key = make_key(tmp_path / "keys")
    start_chefs(net, (3,), nats_url(net, 1), key, tmp_path, "--slots", "1")  # creates the chef registry
    info = nats_tool(net, 1, "kv-info", nats_url(net, 1), subjects.chefs_bucket("cp"))
    del servers
    assert info["replicas"] == 3, info


def test_nats_url_list_skips_a_dead_server(net: Net, tmp_path: Path) -> None:
    # NATS runs on host 6 only; host 1, first in the list, has nothing listening (a node that is down).
    start_nats(net, 6, tmp_path / "nats")
    key = make_key(tmp_path / "keys")
    start_chefs(net, CHEF_HOSTS, nats_url(net, 6), key, tmp_path, "--slots", "1")
    sources = _sources(3, 1024)
    project = _project(tmp_path / "p", sources, pause=0)
    urls = f"{nats_url(net, 1)},{nats_url(net, 6)}"
    run = finish_build(start_majordomo(net, MD_HOST, project, urls, key), BUILD_S)
    assert run.code == 0, run.stderr
    assert (project / "build/all.txt").read_text() == _expected_all(sources)


def _owners(net: Net, host: int, url: str) -> dict[str, list[str]]:
    """The federation's ownership map, read from its JetStream KV bucket: digest key -> owner pods."""
    decode = decoder(Ownership)
    entries = nats_tool(net, host, "kv-keys", url, subjects.owners_bucket("cp"))
    return {k: decode.decode(bytes.fromhex(v)).owners for k, v in entries.items() if v}


def _chef_registry(net: Net, host: int, url: str) -> list[str]:
    return sorted(nats_tool(net, host, "kv-keys", url, subjects.chefs_bucket("cp")))


def _all_urls(net: Net) -> str:
    return ",".join(nats_url(net, h) for h in CLUSTER)


def test_nats_node_killed_mid_build(net: Net, tmp_path: Path) -> None:
    # Clients know node 1's URL only and learn the others from the cluster. The node killed is the one
    # holding the chef registry (its stream leader): the worst one to lose.
    fed = _federation(net, tmp_path, cluster=True, chef_server=1, watch_url=_all_urls(net))
    leader = nats_tool(net, 1, "kv-info", fed.url, subjects.chefs_bucket("cp"))["leader"]
    victim = int(leader.removeprefix("n"))
    alive = next(h for h in CLUSTER if h != victim)
    sources = _sources(9, 64 * 1024)
    project = _project(tmp_path / "p", sources, pause=1)
    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key)
    for chef in CHEF_HOSTS:  # every chef mid-step: a second of work left, replies not yet sent
        fed.events.wait(BUILD_S, kind="step.running", chef_id=f"chef-{chef}")
    fed.servers[victim].kill()
    run = finish_build(md, RECOVER_S)
    assert run.code == 0, run.stderr
    assert (project / "build/all.txt").read_text() == _expected_all(sources)

    # The federation still knows its chefs (they heartbeat into a replicated registry) ...
    url = nats_url(net, alive)
    assert _chef_registry(net, alive, url) == [f"chef-{h}" for h in CHEF_HOSTS]
    # ... and every intermediate is still owned by the chef that made it.
    owners = _owners(net, alive, url)
    made_by = {m.group(1): m.group(2) for line in run.stderr.splitlines() if (m := _RAN.search(line))}
    for rel, data in sources.items():
        digest = "sha256:" + hashlib.sha256(_sum_line(rel, data).encode()).hexdigest()
        step = f"sum[{Path(rel).stem}]"
        assert made_by[step] in owners.get(subjects.kv_key(digest), []), (step, owners)


def test_step_replies_survive_nats_failover(net: Net, tmp_path: Path) -> None:
    # Node 1, which everyone uses, holds no JetStream data: only the path of step replies is under test.
    fed = _federation(net, tmp_path, cluster=True, chef_server=1, watch_server=6, without_jetstream=(1,))
    # Steps without inputs: while the MajorDomo is frozen below, no chef needs its SFTP server.
    recipe = "".join(f'[[step]]\nname = "g{i}"\noutputs = ["build/g{i}.txt"]\ntimeout = 20\n'
                     f'command = "sleep 2; echo {i} > $@"\n\n' for i in range(3))
    recipe += '[[step]]\nname = "all"\ninputs = ["build/g*.txt"]\noutputs = ["build/all.txt"]\ncommand = "cat $^ > $@"\n'
    project = write_project(tmp_path / "p", recipe, {})
    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key)
    for chef in CHEF_HOSTS:
        fed.events.wait(BUILD_S, kind="step.running", chef_id=f"chef-{chef}")
    # The MajorDomo stalls (a busy laptop) while its NATS node dies: the chefs fail over at once and
    # answer through node 6 or 7 before the MajorDomo has reconnected. A deterministic failover race.
    os.kill(md.proc.pid, signal.SIGSTOP)
    try:
        fed.servers[1].kill()
        for chef in CHEF_HOSTS:
            fed.events.wait(BUILD_S, kind="step.done", chef_id=f"chef-{chef}")
    finally:
        os.kill(md.proc.pid, signal.SIGCONT)
    run = finish_build(md, RECOVER_S)
    assert run.code == 0, run.stderr
    assert run.summary["steps_run"] == 4
    assert (project / "build/all.txt").read_text() == "0\n1\n2\n"


def test_nats_node_cut_off_mid_build(net: Net, tmp_path: Path) -> None:
    # Node 1, which everyone uses, loses its cable (no FIN, no RST: a partition, a power cut). It holds
    # no JetStream data, so only failover is under test: nodes 6 and 7 are there to fail over to.
    fed = _federation(net, tmp_path, cluster=True, chef_server=1, watch_server=6, without_jetstream=(1,))
    sources = _sources(6, 64 * 1024)
    project = _project(tmp_path / "p", sources, pause=1)
    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key)
    for chef in CHEF_HOSTS:
        fed.events.wait(BUILD_S, kind="step.running", chef_id=f"chef-{chef}")
    net.link_down(1)
    run = finish_build(md, RECOVER_S)
    assert run.code == 0, run.stderr
    assert run.summary["steps_run"] == 7
    assert (project / "build/all.txt").read_text() == _expected_all(sources)


def test_chef_killed_and_link_cut_mid_build(net: Net, tmp_path: Path) -> None:
    fed = _federation(net, tmp_path)
    # Downloads to chef-4 crawl (4 Mbit/s), so a pull of a 256 KiB source lasts about half a second:
    # cutting its cable right when it starts a step lands in the middle of that transfer.
    net.limit_rate(4, "4mbit")
    sources = _sources(6, 256 * 1024)
    project = _project(tmp_path / "p", sources, pause=1)
    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key)
    cut = fed.events.wait(BUILD_S, kind="step.running", chef_id="chef-4")  # published just before it pulls
    net.link_down(4)
    fed.events.wait(BUILD_S, kind="step.running", chef_id="chef-3")
    fed.chefs[3].kill(signal.SIGKILL)  # and the step it cooks with it (same process group, or bwrap's parent death)
    run = finish_build(md, RECOVER_S)

    assert run.code == 0, run.stderr
    s = run.summary
    assert (s["ok"], s["steps_run"], s["steps_failed"]) == (True, 7, 0)
    assert (project / "build/all.txt").read_text() == _expected_all(sources)
    # chef-4 was cut in the middle of its pull: the input never landed in its store.
    source = f"src/{cut['step_id'][len('sum['):-1]}.bin"
    digest = hashlib.sha256(sources[source]).hexdigest()
    assert f"sha256:{digest}" not in store_files(tmp_path / "chef-4" / "store")
    # Both lost their leases, and their steps were recovered elsewhere with the attempts on record.
    events = fed.events.all()
    assert {e["chef_id"] for e in events if e["kind"] == "chef.lease_lost"} >= {"chef-3", "chef-4"}
    recovered = {e["step_id"]: e["detail"]["history"] for e in events if e["kind"] == "step.recovered"}
    assert cut["step_id"] in recovered and any("chef-4" in h for h in recovered[cut["step_id"]]), recovered
    assert any("chef-3" in h for hs in recovered.values() for h in hs), recovered
    assert {c["id"] for c in s["chefs"]} == {"chef-5"}


def test_majordomo_killed_and_restarted(net: Net, tmp_path: Path) -> None:
    fed = _federation(net, tmp_path)
    sources = _sources(6, 64 * 1024)
    project = _project(tmp_path / "p", sources, pause=1)
    md = start_majordomo(net, MD_HOST, project, fed.url, fed.key, log=tmp_path / "md-1.log")
    # The "ran" line is printed after the result is committed: those steps are finished for good.
    ran = 0

    def third_ran(line: str) -> bool:
        nonlocal ran
        ran += bool(_RAN.search(line))
        return ran >= 3

    md.wait_for(third_ran, BUILD_S, stream="stderr", what="3 finished steps")
    md.kill(signal.SIGKILL)
    finished = {m.group(1) for line in md.lines["stderr"] if (m := _RAN.search(line))}
    assert 3 <= len(finished) < 7 and "all" not in finished, "the kill must land mid-build"

    again = start_majordomo(net, MD_HOST, project, fed.url, fed.key, "-v", log=tmp_path / "md-2.log")
    run = finish_build(again, BUILD_S)
    assert run.code == 0, run.stderr
    cached = {m.group(1) for line in run.stderr.splitlines() if (m := _CACHED.search(line))}
    rerun = {m.group(1) for line in run.stderr.splitlines() if (m := _RAN.search(line))}
    assert finished <= cached and not finished & rerun, (finished, cached, rerun)
    assert run.summary["steps_run"] + run.summary["steps_cached"] == 7
    assert (project / "build/all.txt").read_text() == _expected_all(sources)


def test_harness_sweeps_crashed_runs_and_script_runs_come_and_go(net: Net) -> None:
    # A run whose owner died (SIGKILL: no teardown ran) with a process still inside one of its hosts.
    code = ("import os, signal, subprocess, sys; sys.path.insert(0, 'deploy'); import netns; n = netns.Network(2).up(); "
            "p = n.run(1, ['sleep', 'infinity'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(n.run_id, p.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    crashed = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, timeout=30, cwd=REPO)
    run_id, pid = crashed.stdout.split()
    try:
        assert run_id in harness.runs()
        removed = harness.sweep()
        assert run_id in removed and net.run_id not in removed  # a live run (ours) is never swept
        assert run_id not in harness.runs() and net.run_id in harness.runs()
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")  # dead (at most unreaped)
    finally:
        harness.remove_run(run_id)

    # The script: `up` leaves a persistent run that sweeps keep; `down RUN` removes it.
    up = subprocess.run([sys.executable, "deploy/netns.py", "up", "2"], stdout=subprocess.PIPE, text=True,
                        timeout=30, cwd=REPO, check=True)
    script_run = up.stdout.split()[1].rstrip(":")
    try:
        assert len(harness.runs()[script_run]) == 3 and script_run not in harness.sweep()
    finally:
        subprocess.run([sys.executable, "deploy/netns.py", "down", script_run], timeout=30, cwd=REPO, check=True)
    assert script_run not in harness.runs()
