"""Placement decision time at federation scale (issue 4): p99 of `majordomo.placement.place` under 1 ms.

    python -m bench.placement [--chefs 100] [--artefacts 100000] [--decisions 20000] [--seed 4]

A synthetic federation, all in memory (placement is a pure function, so no NATS is needed):
- `--chefs` registered chefs (ChefInfo): every one cooks `shell`, 70% also `cc`; a few advertise an
  older gcc, so the toolchain filter really filters; 1-8 slots each, a random number running;
- an ownership map of `--artefacts` digests (sha256 hex), each with a size (log-uniform 100 B..10 MB)
  and 1-3 owner chefs;
- `--decisions` steps, 70% `shell` and 30% `cc`, each with 1-50 inputs drawn from the map.

Each decision is timed alone with perf_counter_ns, interleaved with the peer on the same step:
1. `place(...)`: the function the issue targets (p99 < 1 ms);
2. `place(...)` + `Decision.as_detail()` + JSON encoding: what the engine also does per decision,
   since every placement is published with its candidates and scores (informational);
3. the peer: a trivial least-loaded choice, `min(chefs, key=load/slots)` over the same chefs, with
   no kind, toolchain or ownership logic; the ratio says what the policy costs over choosing blindly.
The peer and `place` run on the same steps in the same loop, so load drift hits both alike.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import math
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from majordomo.placement import place
from protocol.messages import ChefInfo, SftpEndpoint

P99_TARGET_S = 1e-3
GCC_NEW, GCC_OLD = "gcc (Debian 12.2.0-14) 12.2.0 x86_64-linux-gnu", "gcc (Debian 10.2.1-6) 10.2.1 x86_64-linux-gnu"
SH = "dash 0.5.12-2"
_encode = msgspec.json.Encoder().encode


@dataclass
class World:
    chefs: list[ChefInfo]
    owners: dict[str, set[str]]
    sizes: dict[str, int]
    load: dict[str, int]
    steps: list[tuple[str, dict[str, str], list[tuple[str, int]]]]  # kind, toolchain, inputs


def make_world(n_chefs: int, n_artefacts: int, n_steps: int, seed: int) -> World:
    rng = random.Random(seed)
    chefs = []
    for i in range(n_chefs):
        cid = f"chef-{i:03d}"
        kinds = ["shell", "cc"] if rng.random() < 0.7 else ["shell"]
        tools = {"sh": SH, "cp": "cp (GNU coreutils) 9.1", "cat": "cat (GNU coreutils) 9.1"}
        if "cc" in kinds:
            tools["gcc"] = GCC_OLD if rng.random() < 0.1 else GCC_NEW
        chefs.append(ChefInfo(id=cid, kinds=kinds, tools=tools,
                              sftp=SftpEndpoint(f"10.0.{i // 250}.{i % 250 + 1}", 2222, "ssh-ed25519 AAAA" + cid),
                              slots=rng.randint(1, 8), host=f"pod-{i:03d}"))
    ids = [c.id for c in chefs]
    load = {c.id: rng.randint(0, c.slots) for c in chefs}
    digests = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n_artefacts)]
    owners = {d: set(rng.sample(ids, rng.randint(1, 3))) for d in digests}
    sizes = {d: int(10 ** rng.uniform(2, 7)) for d in digests}
    steps = []
    for _ in range(n_steps):
        if rng.random() < 0.7:
            kind, toolchain = "shell", {"sh": SH, "cp": "cp (GNU coreutils) 9.1"}
        else:
            kind, toolchain = "cc", {"gcc": GCC_NEW}
        picked = rng.sample(digests, rng.randint(1, 50))
        steps.append((kind, toolchain, [(d, sizes[d]) for d in picked]))
    return World(chefs, owners, sizes, load, steps)


def _least_loaded(chefs: Sequence[ChefInfo], load: dict[str, int]) -> ChefInfo:
    return min(chefs, key=lambda c: load.get(c.id, 0) / max(1, c.slots))


@dataclass
class Series:
    label: str
    ns: list[int]
    target_s: float | None = None

    def pct(self, q: float) -> float:
        ordered = sorted(self.ns)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] / 1e9

    @property
    def verdict(self) -> str:
        if self.target_s is None:
            return "info"
        return "PASS" if self.pct(0.99) < self.target_s else "MISS"


def run(world: World, warmup: int) -> list[Series]:
    chefs, owners, load = world.chefs, world.owners, world.load
    clock = time.perf_counter_ns
    full: list[int] = []
    placed: list[int] = []
    peer: list[int] = []
    empty: list[int] = []
    chosen: dict[str, int] = {}
    for i, (kind, toolchain, inputs) in enumerate(world.steps):
        t0 = clock()
        t1 = clock()
        decision = place(kind, toolchain, inputs, chefs, owners, load)
        t2 = clock()
        _encode(decision.as_detail())
        t3 = clock()
        _least_loaded(chefs, load)
        t4 = clock()
        if i < warmup:
            continue
        empty.append(t1 - t0)
        placed.append(t2 - t1)
        full.append(t3 - t1)
        peer.append(t4 - t3)
        if decision.chef is not None:
            chosen[decision.chef.id] = chosen.get(decision.chef.id, 0) + 1
    print(f"  decisions placed on {len(chosen)} distinct chefs; busiest got {max(chosen.values())} "
          f"of {len(placed):,}")
    return [
        Series("place()", placed, P99_TARGET_S),
        Series("place() + as_detail() + JSON (engine's share)", full),
        Series("peer: min(chefs, key=load/slots)", peer),
        Series("timer alone (perf_counter_ns pair)", empty),
    ]


def print_table(series: Sequence[Series], peer: Series) -> None:
    print(f"\n{'measured':<48} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'max us':>9} {'mean us':>8}"
          f" {'p99 vs peer':>11} {'target':>10}  result")
    for s in series:
        target = f"p99<{s.target_s * 1e3:g}ms" if s.target_s else "-"
        print(f"{s.label:<48} {s.pct(0.5) * 1e6:>8.1f} {s.pct(0.9) * 1e6:>8.1f} {s.pct(0.99) * 1e6:>8.1f}"
              f" {max(s.ns) / 1e3:>9.1f} {statistics.fmean(s.ns) / 1e3:>8.1f}"
              f" {s.pct(0.99) / peer.pct(0.99):>10.1f}x {target:>10}  {s.verdict}")


def profile(world: World, n: int, out: Callable[[str], None]) -> None:
    """Where a decision's time goes: cProfile over `n` decisions (inflates, but splits honestly)."""
    prof = cProfile.Profile()
    prof.enable()
    for kind, toolchain, inputs in world.steps[:n]:
        place(kind, toolchain, inputs, world.chefs, world.owners, world.load)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(8)
    for line in text.getvalue().splitlines():
        if line.strip() and not line.startswith(("   Ordered", "         ")):
            out("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chefs", type=int, default=100)
    parser.add_argument("--artefacts", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-gc", action="store_true", help="disable the cyclic GC while timing (default: on)")
    parser.add_argument("--profile", action="store_true", help="also cProfile 2,000 decisions")
    args = parser.parse_args()
    if min(args.chefs, args.artefacts, args.decisions) < 1:
        parser.error("--chefs, --artefacts and --decisions must be >= 1")
    warmup = min(1000, args.decisions // 10)
    started = time.perf_counter()
    world = make_world(args.chefs, args.artefacts, args.decisions + warmup, args.seed)
    n_inputs = [len(s[2]) for s in world.steps]
    owners_per = statistics.fmean(len(o) for o in world.owners.values())
    print(f"{len(world.chefs)} chefs ({sum('cc' in c.kinds for c in world.chefs)} cook cc,"
          f" {sum(c.tools.get('gcc') == GCC_OLD for c in world.chefs)} with an older gcc),"
          f" {len(world.owners):,} artefacts ({owners_per:.2f} owners each),"
          f" {args.decisions:,} decisions (+{warmup} warm-up) with {min(n_inputs)}-{max(n_inputs)} inputs"
          f" (mean {statistics.fmean(n_inputs):.1f}); built in {time.perf_counter() - started:.1f} s")
    print(f"python {sys.version.split()[0]}; gc {'off' if args.no_gc else 'on'} while timing")
    if args.no_gc:
        gc.disable()
    try:
        series = run(world, warmup)
    finally:
        gc.enable()
    print_table(series, series[2])
    if args.profile or series[0].verdict == "MISS":
        print("\ncProfile of 2,000 place() calls, by own time:")
        profile(world, 2000, print)
    raise SystemExit(0 if series[0].verdict != "MISS" else 1)


if __name__ == "__main__":
    main()
