"""A 2,000-step build of tiny steps on two local chefs vs `ninja -j2` (issue 4), and MajorDomo CPU per step.

    python -m bench.federation [--steps 2000] [--rounds 3] [--keep DIR] [--profile]

The graph is bench.incremental's: N sources, one pattern rule `cp $< $@` (N independent steps), one
`cat` per 100 outputs and one final `cat` (N + N/100 + 1 steps), as `majordomo.toml` and
`build.ninja`. Every round is a clean build of both, interleaved (so load drift hits both alike):
- `majordomo build -q`: embedded federation (a private nats-server and two local chefs with the
  default slots, started and stopped by the build; their start-up is part of the wall time);
- `ninja -j2`.
Target (issue 4): majordomo's wall time at most 2x ninja's (best vs best, and median vs median).

CPU: majordomo runs through a two-line wrapper that, at exit, writes the MajorDomo process's own
`getrusage(RUSAGE_SELF)` (all its threads, none of its children) to a file; the bench's own
`getrusage(RUSAGE_CHILDREN)` delta around each run gives everything (MajorDomo, nats-server, chefs
and the commands they ran, all waited for). Target (issue 4): under 1 ms of MajorDomo CPU per step.
A one-step project, built clean the same way in every round, gives the per-build floor (start-up,
federation start and stop); (CPU(N) - CPU(1)) / (steps - 1) is the marginal CPU per step.
`--profile` builds once more under cProfile (raw file in bench/out/federation.prof).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.incremental import (
    GROUP,
    REPO,
    BenchError,
    _majordomo_env,
    _ninja_binary,
    _wipe,
    build_ninja,
    in_workdir,
    majordomo_toml,
    steps_run,
    write_sources,
)
from bench.incremental import _names as names_for

OUT_DIR = Path(__file__).resolve().parent / "out"
WALL_TARGET = 2.0
CPU_PER_STEP_TARGET_S = 1e-3
BUILD_TIMEOUT_S = 900.0

# Runs `python -m majordomo.cli ARGS` and, at exit, writes its own CPU seconds (user, system) to argv[1].
WRAPPER = (
    "import atexit, json, resource, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(resource.getrusage(resource.RUSAGE_SELF)[:2])))\n"
    "sys.argv[0] = 'majordomo'\n"
    "runpy.run_module('majordomo.cli', run_name='__main__', alter_sys=True)\n"
)


def total_steps(n: int) -> int:
    return n + -(-n // GROUP) + 1


def generate(base: Path, n: int, *, salted: bool = False) -> tuple[Path, Path, list[str]]:
    """The majordomo and ninja projects; `salted` adds `# $SALT` to every command (a new action key
    per `--var SALT=...`, for a federation whose action cache outlives a build)."""
    names = names_for(n)
    md, nj = base / "majordomo", base / "ninja"
    toml = majordomo_toml(names)
    if salted:
        toml = ('[vars]\nSALT = "0"\n\n' + toml.replace('command = "cp $< $@"', 'command = "cp $< $@ # $SALT"')
                .replace('command = "cat $^ > $@"', 'command = "cat $^ > $@ # $SALT"'))
    for root, file, text in ((md, "majordomo.toml", toml), (nj, "build.ninja", build_ninja(names))):
        write_sources(root, names)
        (root / file).write_text(text)
    return md, nj, names


@dataclass
class Sample:
    wall: float
    cpu_all: float  # every process of the run, waited for
    cpu_md: float | None = None  # the MajorDomo process alone
    ran: int | None = None


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_timed(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[Sample, str]:
    cpu0 = children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])} ... exited {proc.returncode} in {cwd}:\n{out[-3000:]}")
    return Sample(wall, cpu), out


def run_majordomo(project: Path, env: dict[str, str], args: Sequence[str], scratch: Path) -> tuple[Sample, str]:
    """`majordomo build ARGS -C project` through the CPU wrapper."""
    usage = scratch / "md-rusage.json"
    usage.unlink(missing_ok=True)
    sample, out = run_timed([sys.executable, "-c", WRAPPER, str(usage), "build", *args, "-C", str(project)],
                            REPO, env)
    user, system = json.loads(usage.read_text())
    sample.cpu_md = user + system
    sample.ran = steps_run(out)
    return sample, out


@dataclass
class Series:
    label: str
    samples: list[Sample] = field(default_factory=list)

    def stat(self, attr: str, fn: str) -> float:
        values = [v for s in self.samples if (v := getattr(s, attr)) is not None]
        return min(values) if fn == "best" else statistics.median(values)


def _fmt(values: Sequence[float]) -> str:
    return "  ".join(f"{v:.2f}" for v in values)


def report(n_steps: int, md: Series, ninja: Series, floor: Series) -> bool:
    print("\nper round (wall s / MajorDomo CPU s / all-process CPU s):")
    for s in (md, ninja, floor):
        print(f"  {s.label:<40} wall {_fmt([x.wall for x in s.samples])}")
        if s.samples[0].cpu_md is not None:
            print(f"  {'':<40} md cpu {_fmt([x.cpu_md or 0 for x in s.samples])}")
        print(f"  {'':<40} all cpu {_fmt([x.cpu_all for x in s.samples])}")
    ok = True
    print(f"\n{'statistic':<9} {'tool':<40} {'wall s':>8} {'vs ninja':>9} {'target':>7}  {'result':<6}"
          f" {'ms/step':>8} {'all CPU s':>9} {'all CPU ms/step':>15}")
    for stat in ("best", "median"):
        ninja_wall = ninja.stat("wall", stat)
        for s, target in ((md, WALL_TARGET), (ninja, None)):
            wall = s.stat("wall", stat)
            verdict = "info" if target is None else ("PASS" if wall / ninja_wall <= target else "MISS")
            ok = ok and verdict != "MISS"
            print(f"{stat:<9} {s.label:<40} {wall:>8.2f} {wall / ninja_wall:>8.2f}x"
                  f" {f'<={target:g}x' if target else '-':>7}  {verdict:<6} {wall / n_steps * 1e3:>8.2f}"
                  f" {s.stat('cpu_all', stat):>9.2f} {s.stat('cpu_all', stat) / n_steps * 1e3:>15.2f}")
    print(f"\n{'statistic':<9} {'MajorDomo CPU':>13} {'per step':>10} {'target':>8}  {'result':<6}"
          f" {'1-step floor':>12} {'marginal/step':>13}")
    for stat in ("best", "median"):
        cpu, base = md.stat("cpu_md", stat), floor.stat("cpu_md", stat)
        per_step = cpu / n_steps
        verdict = "PASS" if per_step < CPU_PER_STEP_TARGET_S else "MISS"
        ok = ok and verdict != "MISS"
        print(f"{stat:<9} {cpu:>11.2f} s {per_step * 1e3:>7.2f} ms {'<1 ms':>8}  {verdict:<6}"
              f" {base:>10.2f} s {(cpu - base) / (n_steps - 1) * 1e3:>10.2f} ms")
    return ok


def profile_build(project: Path, env: dict[str, str], scratch: Path) -> None:
    OUT_DIR.mkdir(exist_ok=True)
    prof = OUT_DIR / "federation.prof"
    _wipe(project)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "majordomo.cli", "build", "-q",
                    "-C", str(project)], cwd=REPO, env=env, capture_output=True, timeout=BUILD_TIMEOUT_S, check=True)
    wall = time.perf_counter() - start
    with open(OUT_DIR / "federation-cprofile.txt", "w") as text:
        pstats.Stats(str(prof), stream=text).sort_stats("tottime").print_stats(60)
        pstats.Stats(str(prof), stream=text).sort_stats("cumulative").print_stats(100)
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    busy = sum(tt for (file, _l, func), (_cc, _nc, tt, _ct, _c) in stats.items()
               if not (file == "~" and ("poll" in func or "select" in func)))
    print(f"  profiled clean build: {wall:.2f} s wall; {busy:.2f} s of profiled time outside the event loop's"
          f" select/poll; text in {os.path.relpath(OUT_DIR)}/federation-cprofile.txt")
    groups: dict[str, float] = {}
    for (file, _l, func), (_cc, _nc, tt, _ct, _c) in stats.items():
        if file == "~":
            if "poll" in func or "select" in func:
                continue
            group = "builtins: " + func.split(" of ")[0].strip("<>{}")
        elif "site-packages/" in file:
            group = file.split("site-packages/")[1].split("/")[0]
        elif file.startswith(str(REPO)):
            group = os.path.relpath(file, REPO)
        else:
            parent = Path(file).parent.name
            group = "stdlib: " + (parent if parent in ("asyncio", "concurrent", "email", "json") else Path(file).name)
        groups[group] = groups.get(group, 0.0) + tt
    print(f"  {'own s':>8} {'share':>6}  by package or file (main thread only; select/poll left out)")
    for group, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:15]:
        print(f"  {tt:>8.3f} {tt / busy:>6.1%}  {group}")
    print(f"\n  {'tottime':>8} {'share':>6} {'calls':>8}  function (top 25 by own time, select/poll left out)")
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    shown = 0
    for (file, line, func), (_cc, nc, tt, _ct, _c) in ranked:
        if file == "~" and ("poll" in func or "select" in func):
            continue
        where = func if file == "~" else (
            f"{os.path.relpath(file, REPO) if file.startswith(str(REPO)) else Path(file).name}:{line}({func})")
        print(f"  {tt:>8.3f} {tt / busy:>6.1%} {nc:>8}  {where}")
        shown += 1
        if shown == 25:
            break


def run(base: Path, n: int, rounds: int, profile: bool) -> bool:
    md, nj, _names = generate(base, n)
    one = base / "one"
    write_sources(one, ["f0"])
    (one / "majordomo.toml").write_text(
        '[[rule]]\nname = "copy"\ninputs = ["src/%.txt"]\noutputs = ["build/%.out"]\ncommand = "cp $< $@"\n')
    steps = total_steps(n)
    ninja_bin = _ninja_binary()
    config = base / "config"
    config.mkdir()
    env = _majordomo_env(config)
    # The all-process CPU column sums the MajorDomo and its children: the chefs must be its children,
    # not a resident supervisor's (their start-up, ~0.5 s, is small against a 2,000-step build).
    env["MAJORDOMO_RESIDENT"] = "0"
    print(f"{n:,} cp steps + {steps - n - 1} cat of <= {GROUP} + 1 final cat = {steps:,} steps per tool; under {base}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.1f}' for x in os.getloadavg())};"
          f" python {sys.version.split()[0]}; ninja {ninja_bin}")
    md_s = Series("majordomo build -q (embedded, 2 chefs)")
    nj_s = Series("ninja -j2")
    floor = Series("majordomo build -q, 1-step project")
    for r in range(rounds):
        order = ("md", "ninja") if r % 2 == 0 else ("ninja", "md")
        for which in order:
            if which == "md":
                _wipe(md)
                sample, out = run_majordomo(md, env, ["-q"], base)
                if sample.ran != steps:
                    raise BenchError(f"majordomo ran {sample.ran} steps, expected {steps}:\n{out[-2000:]}")
                md_s.samples.append(sample)
            else:
                _wipe(nj)
                sample, out = run_timed([ninja_bin, "-j2"], nj)
                if f"[{steps}/{steps}]" not in out:
                    raise BenchError(f"ninja did not run {steps} steps:\n{out[-1000:]}")
                nj_s.samples.append(sample)
        _wipe(one)
        sample, out = run_majordomo(one, env, ["-q"], base)
        if sample.ran != 1:
            raise BenchError(f"the one-step build ran {sample.ran} steps:\n{out[-2000:]}")
        floor.samples.append(sample)
        print(f"  round {r + 1}: majordomo {md_s.samples[-1].wall:.2f} s, ninja {nj_s.samples[-1].wall:.2f} s,"
              f" 1-step {floor.samples[-1].wall:.2f} s")
    if (md / "build/all.txt").read_bytes() != (nj / "build/all.txt").read_bytes():
        raise BenchError("build/all.txt differs between majordomo and ninja")
    ok = report(steps, md_s, nj_s, floor)
    if profile:
        print("\nprofile (one more clean majordomo build under cProfile):")
        profile_build(md, env, base)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="number of sources (cp steps); default 2,000")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--keep", type=Path, default=None, help="build in this (new) directory and keep it")
    parser.add_argument("--profile", action="store_true", help="also profile one majordomo build with cProfile")
    args = parser.parse_args()
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be >= 2 and --rounds >= 1")
    in_workdir("federation", args.keep, lambda base: run(base, args.steps, args.rounds, args.profile),
               (BenchError, subprocess.SubprocessError))


if __name__ == "__main__":
    main()
