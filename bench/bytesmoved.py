"""Bytes moved in a cross-host build vs the minimum (issue 4): each input reaches each pod at most once.

    python3 -m bench.bytesmoved [--rounds 2] [--size-kib 256] [--shared 4] [--fan 12] [--slots 2]
                                [--pause 0.2] [--keep DIR]            (as root: network namespaces)

Hosts are network namespaces on this machine (deploy/netns.py, driven through tests/netns.py as
tests/test_multihost.py does), 198.18.0.N on one bridge: a nats-server with JetStream on host 1,
the MajorDomo (`majordomo build --json --nats ...`) on host 2, one chef each on hosts 3, 4 and 5
(`--slots`, `--no-hand-over`, Prometheus metrics on the host's own loopback). Every round builds a
fresh federation with empty stores and removes it afterwards (also on an error, Ctrl-C or SIGTERM).

The graph (random sources of `--size-kib` each, so no two files share a digest):
- gen{i} (i < 3):  src/own/o{i}.bin + src/shared/s{i%S}.bin  -> build/mid/m{i}.bin  (`cat $^`)
- fan{j} (j < N):  src/shared/s{j%S}.bin + m{j%3} + m{(j+1)%3} -> build/fan/f{j}.sum (`sha256sum` of j, $^)
- all:             build/fan/*.sum                            -> build/all.txt       (the only final output)
Every fan step reads a shared source and two intermediates made on (usually) two other chefs, and
several fan steps on one chef read the same ones, so a scheme pulling per step moves them many times.

Moved (bytes that really crossed the network into each pod, artefact payload only):
- a chef: its own `computepods_bytes_pulled_total` (GET /metrics), and the sizes in the
  `artefact.owned` events it published after each pull (one per pull, from a NATS watcher);
- the MajorDomo: the bytes its Puller transferred, read at exit through a wrapper (as
  bench.federation wraps it for CPU), since the CLI does not report its own share apart;
- cross-check: SFTP bytes served by every pod (chefs' `computepods_bytes_served_total`, the
  MajorDomo's server through the wrapper) must equal the bytes pulled by every pod;
- for information, the wire: `rx_bytes` of each host's eth0 over the build (TCP/IP, SSH and NATS
  overhead included, so always above the payload).
A pod's moved figure is the larger of its two counts; the total is the largest of those summed,
the bytes pulled and the bytes served. `majordomo build --json`'s `bytes_pulled` is shown as a
note only: it adds up per-step figures, which are not a measurement of the wire.

Minimum: from the placements (`step.running` events), for each chef the sizes of the distinct
digests its steps read that none of its own steps produced (stores start empty); for the MajorDomo
the final outputs it fetches back (it holds the sources). Naive: every step pulls every input it
reads, and the final outputs are fetched. Target: moved == minimum for every pod (ratio 1.00);
the bench exits 1 if any pod moved more (or, which would mean a broken measurement, less).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.incremental import REPO, BenchError, in_workdir

NATS_HOST, MD_HOST, CHEF_HOSTS = 1, 2, (3, 4, 5)
GEN = len(CHEF_HOSTS)  # one intermediate per chef, made in parallel
METRICS_PORT = 9100  # on each host's own loopback: every namespace has its own
BUILD_S = 180.0  # bound on one build (a healthy one takes a few seconds)
EVENTS_S = 20.0  # bound on the watcher seeing the build's last event
KiB = 1024

# Runs `python -m majordomo.cli ARGS` and, at exit, writes to argv[1] what the MajorDomo's own Puller
# transferred and its own SFTP server served: the CLI reports neither apart from the chefs' pulls.
WRAPPER = (
    "import atexit, json, runpy, sys\n"
    "from artefacts import sftp_client, sftp_server\n"
    "out, made = sys.argv.pop(1), []\n"
    "def keep(cls):\n"
    "    init = cls.__init__\n"
    "    def wrapped(self, *a, **k):\n"
    "        init(self, *a, **k)\n"
    "        made.append(self)\n"
    "    cls.__init__ = wrapped\n"
    "keep(sftp_client.Puller)\n"
    "keep(sftp_server.ArtefactServer)\n"
    "def dump():\n"
    "    p = [m for m in made if isinstance(m, sftp_client.Puller)]\n"
    "    s = [m for m in made if isinstance(m, sftp_server.ArtefactServer)]\n"
    "    json.dump({'files_pulled': sum(m.files_pulled for m in p), 'bytes_pulled': sum(m.bytes_pulled for m in p),\n"
    "               'files_served': sum(m.files_opened for m in s), 'bytes_served': sum(m.bytes_served for m in s)},\n"
    "              open(out, 'w'))\n"
    "atexit.register(dump)\n"
    "sys.argv[0] = 'majordomo'\n"
    "runpy.run_module('majordomo.cli', run_name='__main__', alter_sys=True)\n"
)
METRICS_GET = ("import sys, urllib.request\n"
               "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n")
_METRIC_RE = re.compile(r'^(computepods_bytes_(?:pulled|served)_total)\{pod="([^"]+)"\} (\d+)$', re.M)


def _kit() -> Any:
    """tests/netns.py (the multi-host kit: Network, Watched, start_nats, start_chefs, Events)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)  # it imports conftest from there
    import netns

    return netns


# ---- the project --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Art:
    digest: str
    size: int


@dataclass
class Graph:
    files: dict[str, bytes]  # the sources, written to the workspace
    steps: dict[str, tuple[list[str], list[str]]]  # step id -> (input paths, output paths)
    arts: dict[str, Art]  # every path, source or output, with the bytes it must hold
    expected: dict[str, bytes]  # final outputs
    toml: str


def _step_toml(name: str, inputs: Sequence[str], output: str, command: str) -> str:
    return (f'[[step]]\nname = "{name}"\ninputs = {json.dumps(list(inputs))}\noutputs = ["{output}"]\n'
            f'command = "{command}"\n\n')


def make_graph(shared: int, fan: int, size: int, pause: float, seed: int) -> Graph:
    """Sources, recipe, and the content of every output computed here (not taken from the build)."""
    rng = random.Random(seed)
    files = {f"src/shared/s{k}.bin": rng.randbytes(size) for k in range(shared)}
    files |= {f"src/own/o{i}.bin": rng.randbytes(size) for i in range(GEN)}
    content = dict(files)
    steps: dict[str, tuple[list[str], list[str]]] = {}
    toml = ""
    for i in range(GEN):
        ins, out = [f"src/own/o{i}.bin", f"src/shared/s{i % shared}.bin"], f"build/mid/m{i}.bin"
        content[out] = b"".join(content[p] for p in ins)
        steps[f"gen{i}"] = (ins, [out])
        toml += _step_toml(f"gen{i}", ins, out, f"sleep {pause:g}; cat $^ > $@")
    width = len(str(fan - 1))
    fans = []
    for j in range(fan):
        ins = [f"src/shared/s{j % shared}.bin", f"build/mid/m{j % GEN}.bin", f"build/mid/m{(j + 1) % GEN}.bin"]
        out = f"build/fan/f{j:0{width}d}.sum"
        # The step's number goes into the hash: no two fan outputs share a digest, whatever --fan is.
        data = f"{j}\n".encode() + b"".join(content[p] for p in ins)
        content[out] = hashlib.sha256(data).hexdigest().encode() + b"  -\n"
        steps[f"fan{j}"] = (ins, [out])
        fans.append(out)
        toml += _step_toml(f"fan{j}", ins, out, f"sleep {pause:g}; echo {j} | cat - $^ | sha256sum > $@")
    fans.sort()  # the glob's order
    content["build/all.txt"] = b"".join(content[p] for p in fans)
    steps["all"] = (fans, ["build/all.txt"])
    toml += _step_toml("all", ["build/fan/*.sum"], "build/all.txt", "cat $^ > $@")
    arts = {p: Art("sha256:" + hashlib.sha256(b).hexdigest(), len(b)) for p, b in content.items()}
    if len({a.digest for a in arts.values()}) != len(arts):
        raise BenchError("two files of the graph share a digest: the minimum would be ambiguous")
    return Graph(files, steps, arts, {"build/all.txt": content["build/all.txt"]}, toml)


def write_project(root: Path, graph: Graph) -> Path:
    for rel, data in graph.files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "majordomo.toml").write_text(graph.toml)
    return root


# ---- the hosts ----------------------------------------------------------------------------------

@contextlib.contextmanager
def network(kit: Any, hosts: int) -> Iterator[Any]:
    """Hosts 1..N; every process and namespace is removed afterwards, even on Ctrl-C or SIGTERM."""
    reason = kit.harness.unsupported_reason()
    if reason:
        raise BenchError(reason)
    kit.harness.sweep()  # leftovers of a crashed earlier run (never a run another live process owns)
    net = kit.Network(hosts).up()
    try:
        yield net
    finally:
        # A second Ctrl-C must not cut the teardown short: hold the signals until it is done.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            net.down()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if net.run_id in kit.harness.runs():
            raise BenchError(f"namespaces of run {net.run_id} left behind")


def wire_rx(net: Any, host: int) -> int:
    """Bytes host's eth0 has received so far (every frame: NATS, SSH, TCP/IP headers)."""
    proc = subprocess.run(["ip", "-n", net.host(host).ns, "-s", "-j", "link", "show", "dev", "eth0"],
                          capture_output=True, text=True, timeout=30, check=True)
    return int(json.loads(proc.stdout)[0]["stats64"]["rx"]["bytes"])


def chef_metrics(net: Any, host: int) -> dict[str, int]:
    text = net.check_output(host, [sys.executable, "-c", METRICS_GET, f"http://127.0.0.1:{METRICS_PORT}/metrics"])
    found = {name.removeprefix("computepods_").removesuffix("_total"): int(v)
             for name, _pod, v in _METRIC_RE.findall(text)}
    if set(found) != {"bytes_pulled", "bytes_served"}:
        raise BenchError(f"chef on host {host}: no byte counters in its metrics:\n{text[:2000]}")
    return found


# ---- one round ----------------------------------------------------------------------------------

@dataclass
class Pod:
    name: str
    host: int
    steps: list[str] = field(default_factory=list)
    minimum: int = 0
    minimum_files: int = 0
    naive: int = 0
    counted: int = 0  # the pod's own counter of bytes pulled
    evented: int | None = None  # sizes in its artefact.owned events (chefs only)
    evented_files: int = 0
    served: int = 0
    wire: int = 0
    duplicates: list[str] = field(default_factory=list)  # digests pulled more than once, with their paths
    unneeded: list[str] = field(default_factory=list)  # digests pulled that no step of the pod read

    @property
    def moved(self) -> int:
        return max(self.counted, self.evented or 0)


@dataclass
class Round:
    pods: list[Pod]
    duration_s: float
    pulled: int  # every pod's own count, summed
    served: int  # every pod's SFTP server, summed
    reported: tuple[int, int]  # files and bytes pulled, as `majordomo build --json` says (not a measurement)

    @property
    def moved(self) -> int:
        return max(self.pulled, self.served, sum(p.moved for p in self.pods))

    @property
    def minimum(self) -> int:
        return sum(p.minimum for p in self.pods)

    @property
    def naive(self) -> int:
        return sum(p.naive for p in self.pods)


def minimum_for(graph: Graph, ran: Sequence[str]) -> tuple[set[str], int]:
    """The digests a chef that ran these steps must receive (what they read, less what they made)
    and what pulling per step would move instead."""
    made = {graph.arts[o].digest for s in ran for o in graph.steps[s][1]}
    read = {graph.arts[i].digest for s in ran for i in graph.steps[s][0]}
    naive = sum(graph.arts[i].size for s in ran for i in graph.steps[s][0])
    return read - made, naive


def run_round(kit: Any, base: Path, graph: Graph, slots: int, verbose: bool) -> Round:
    with network(kit, max(CHEF_HOSTS)) as net:
        kit.start_nats(net, NATS_HOST, base / "nats")
        url = kit.nats_url(net, NATS_HOST)
        key = kit.make_key(base / "keys")
        kit.start_chefs(net, CHEF_HOSTS, url, key, base, "--slots", str(slots), "--no-hand-over",
                        "--metrics-listen", f"127.0.0.1:{METRICS_PORT}")
        events = kit.Events(net, NATS_HOST, url, base / "events.log")
        project = write_project(base / "project", graph)
        hosts = (MD_HOST, *CHEF_HOSTS)
        wire0 = {h: wire_rx(net, h) for h in hosts}
        usage = base / "majordomo-bytes.json"
        addr = net.addr(MD_HOST)
        md = kit.Watched(net, MD_HOST, [sys.executable, "-c", WRAPPER, str(usage), "build", "-C", str(project),
                                        "--json", "--nats", url, "--sftp-listen", f"{addr}:0", "--advertise", addr],
                         base / "majordomo.log", env={"MAJORDOMO_KEY": str(key)}, name="majordomo")
        build = kit.finish_build(md, BUILD_S)
        if build.code != 0:
            raise BenchError(f"the build failed ({build.code}):\n{build.stderr[-3000:]}")
        summary = build.summary
        if summary["steps_run"] != len(graph.steps) or not summary["ok"]:
            raise BenchError(f"the build ran {summary['steps_run']} of {len(graph.steps)} steps: {summary}")
        for rel, data in graph.expected.items():
            if (project / rel).read_bytes() != data:
                raise BenchError(f"{rel} differs from what the bench computed: its digests would be wrong")
        # The MajorDomo's last event; the chefs published theirs before answering their steps.
        events.wait(EVENTS_S, kind="build.finished")
        wire = {h: wire_rx(net, h) - wire0[h] for h in hosts}
        metrics = {h: chef_metrics(net, h) for h in CHEF_HOSTS}
        md_bytes = json.loads(usage.read_text())
        seen = events.all()

    pods = {f"chef-{h}": Pod(f"chef-{h}", h) for h in CHEF_HOSTS}
    for e in seen:
        if e["kind"] == "step.running":  # every attempt: a retried step needed its inputs twice
            pods[e["chef_id"]].steps.append(e["step_id"])
    done = Counter(e["step_id"] for e in seen if e["kind"] == "step.done")
    if set(done) != set(graph.steps) or max(done.values()) != 1:
        raise BenchError(f"expected one step.done per step, saw {dict(done)}")
    path_of = {a.digest: p for p, a in graph.arts.items()}
    for pod in pods.values():
        needed, pod.naive = minimum_for(graph, pod.steps)
        pod.minimum = sum(graph.arts[path_of[d]].size for d in needed)
        pod.minimum_files = len(needed)
        h = pod.host
        pod.counted, pod.served, pod.wire = metrics[h]["bytes_pulled"], metrics[h]["bytes_served"], wire[h]
        pulls = [e["detail"] for e in seen if e["kind"] == "artefact.owned" and e["source"] == pod.name]
        pod.evented = sum(int(d["size"]) for d in pulls)
        pod.evented_files = len(pulls)
        times = Counter(d["digest"] for d in pulls)
        pod.duplicates = [f"{path_of.get(d, d)} x{n}" for d, n in times.items() if n > 1]
        pod.unneeded = [path_of.get(d, d) for d in times if d not in needed]
    finals = {graph.arts[p].digest for p in graph.expected} - {graph.arts[p].digest for p in graph.files}
    majordomo = Pod("majordomo", MD_HOST, steps=[], counted=md_bytes["bytes_pulled"], served=md_bytes["bytes_served"],
                    wire=wire[MD_HOST], evented_files=md_bytes["files_pulled"])
    majordomo.minimum = majordomo.naive = sum(graph.arts[path_of[d]].size for d in finals)
    majordomo.minimum_files = len(finals)
    every = [*pods.values(), majordomo]
    if verbose:
        print(f"  logs and events under {base}")
    return Round(every, float(summary["duration_s"]), sum(p.counted for p in every), sum(p.served for p in every),
                 (summary["files_pulled"], summary["bytes_pulled"]))


# ---- report -------------------------------------------------------------------------------------

def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / KiB:,.1f}"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else ("1.00" if a == 0 else "inf")


def report_round(n: int, r: Round) -> list[str]:
    """Print the round's table; return what is wrong with it (empty when moved == minimum everywhere)."""
    print(f"\nround {n}: build {r.duration_s:.2f} s; KiB of artefact payload per receiving pod")
    print(f"  {'pod':<10} {'host':<11} {'steps':>5} {'min files':>9} {'minimum':>10} {'moved':>10} {'ratio':>6}"
          f" {'own count':>10} {'events':>10} {'pulls':>5} {'naive':>10} {'served':>10} {'wire rx':>10}")
    wrong: list[str] = []
    for p in r.pods:
        print(f"  {p.name:<10} 198.18.0.{p.host:<3} {len(p.steps) if p.steps else '-':>5} {p.minimum_files:>9}"
              f" {_kib(p.minimum):>10} {_kib(p.moved):>10} {_ratio(p.moved, p.minimum):>6} {_kib(p.counted):>10}"
              f" {_kib(p.evented):>10} {p.evented_files:>5} {_kib(p.naive):>10} {_kib(p.served):>10}"
              f" {_kib(p.wire):>10}")
        if p.moved != p.minimum:
            wrong.append(f"{p.name} moved {p.moved:,} B, minimum {p.minimum:,} B")
        if p.evented is not None and p.evented != p.counted:
            wrong.append(f"{p.name}: its counter says {p.counted:,} B, its artefact.owned events {p.evented:,} B")
        if p.duplicates:
            wrong.append(f"{p.name} pulled the same digest more than once: {', '.join(p.duplicates)}")
        if p.unneeded:
            wrong.append(f"{p.name} pulled what none of its steps read: {', '.join(p.unneeded)}")
    print(f"  {'total':<10} {'':<11} {sum(len(p.steps) for p in r.pods):>5} {sum(p.minimum_files for p in r.pods):>9}"
          f" {_kib(r.minimum):>10} {_kib(r.moved):>10} {_ratio(r.moved, r.minimum):>6} {_kib(r.pulled):>10}"
          f" {'':>10} {'':>5} {_kib(r.naive):>10} {_kib(r.served):>10} {_kib(sum(p.wire for p in r.pods)):>10}")
    for p in r.pods[:-1]:
        print(f"  {p.name} ran {', '.join(p.steps)}")
    files, size = r.reported
    if size != r.moved:  # a reporting matter, not bytes on the wire: noted, not failed
        print(f"  note: `majordomo build --json` says {files} files / {_kib(size)} KiB pulled,"
              f" {_ratio(size, r.moved)}x the bytes measured ({sum(p.evented_files for p in r.pods)} pulls)")
    if r.pulled != r.served:
        wrong.append(f"pulled by every pod {r.pulled:,} B != served by every pod {r.served:,} B")
    if r.moved != r.minimum:
        wrong.append(f"total moved {r.moved:,} B, minimum {r.minimum:,} B")
    for line in wrong:
        print(f"  ! {line}")
    return wrong


def run(base: Path, args: argparse.Namespace) -> bool:
    kit = _kit()
    graph = make_graph(args.shared, args.fan, args.size_kib * KiB, args.pause, args.seed)
    sources = sum(len(b) for b in graph.files.values())
    print(f"{len(graph.steps)} steps ({GEN} gen, {args.fan} fan-out, 1 final) over {len(graph.files)} sources of"
          f" {args.size_kib} KiB ({sources / KiB:,.0f} KiB); chefs on hosts {', '.join(map(str, CHEF_HOSTS))} with"
          f" {args.slots} slot(s) each, MajorDomo on host {MD_HOST}, NATS on host {NATS_HOST}")
    rounds: list[Round] = []
    ok = True
    for n in range(1, args.rounds + 1):
        started = time.perf_counter()
        rounds.append(run_round(kit, base / f"round-{n}", graph, args.slots, args.keep is not None))
        ok = not report_round(n, rounds[-1]) and ok
        print(f"  round wall time with set-up and teardown {time.perf_counter() - started:.1f} s")
    print(f"\n{'round':<6} {'minimum KiB':>12} {'moved KiB':>10} {'moved/min':>9} {'target':>6}  {'result':<6}"
          f" {'naive KiB':>10} {'naive/min':>9}")
    for n, r in enumerate(rounds, 1):
        verdict = "PASS" if r.moved == r.minimum and all(p.moved == p.minimum for p in r.pods) else "MISS"
        print(f"{n:<6} {_kib(r.minimum):>12} {_kib(r.moved):>10} {_ratio(r.moved, r.minimum):>9} {'1.00':>6}"
              f"  {verdict:<6} {_kib(r.naive):>10} {_ratio(r.naive, r.minimum):>9}")
    return ok


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the namespaces and the work dir go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="clean builds, each on a fresh federation")
    parser.add_argument("--size-kib", type=int, default=256, help="size of every source (KiB)")
    parser.add_argument("--shared", type=int, default=4, help="shared sources the fan-out steps read")
    parser.add_argument("--fan", type=int, default=12, help="fan-out steps")
    parser.add_argument("--slots", type=int, default=2, help="slots per chef (>1: one chef pulls for several steps)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds each gen/fan step sleeps, so steps overlap")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None, help="work in this (new) directory and keep it (logs)")
    args = parser.parse_args()
    if args.rounds < 1 or args.size_kib < 1 or args.fan < 1 or args.slots < 1 or not 1 <= args.shared:
        parser.error("--rounds, --size-kib, --fan, --slots and --shared must be >= 1")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        in_workdir("bytesmoved", args.keep, lambda base: run(base, args),
                   (BenchError, subprocess.SubprocessError, AssertionError))
    except KeyboardInterrupt:
        raise SystemExit("bench.bytesmoved: interrupted (namespaces and work dir removed)") from None


if __name__ == "__main__":
    main()
