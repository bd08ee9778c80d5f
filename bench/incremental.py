"""Incremental build overhead of `majordomo build` against ninja (and make), measured in one run.

    python -m bench.incremental [--steps N] [--rounds R] [--keep DIR] [--no-profile]

Generates, in a temp dir, three sibling projects with identical sources: N files `src/fNNNNN.txt`,
one pattern rule `cp $< $@` to `build/fNNNNN.out`, one `cat` step per 100 outputs into
`build/agg/NNN.txt`, and one `cat` of those into `build/all.txt` (the only final output, so the
embedded federation pulls back one file). `majordomo.toml`, `build.ninja` and a `Makefile` describe
the same graph; the three `build/all.txt` must come out equal. (ninja and make write every
intermediate into the workspace; majordomo leaves them in the chef stores.) ninja is its real binary,
not a wrapper; majordomo runs this checkout (PYTHONPATH) with a fresh, empty user config.

Measured (best of R where a round is cheap):
1. clean build: `majordomo build -q` (embedded federation) vs `ninja` vs `make -j2`; informational.
2. no-op: majordomo vs `ninja` vs `make -q`; target majordomo <= 3x ninja.
3. one source touched (os.utime, same bytes) and one source changed: majordomo vs ninja; target <= 2x.

The no-op is also profiled once with `-X importtime` and cProfile; raw files go to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "out"
GROUP = 100  # outputs per aggregate step
OLD_MTIME_S = time.time() - 3600  # sources predate the run, so no stat cache entry is "racy"
NOOP_TARGET = 3.0
REBUILD_TARGET = 2.0
CHEAP_S = 20.0  # a clean build faster than this is repeated to take the best of R
TOUCHED = 42  # index of the source touched / changed in phase 3


# -- the projects -------------------------------------------------------------------------------


def _names(n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"f{i:0{width}d}" for i in range(n)]


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Aggregate groups keyed by the stem minus its last two digits: 100 consecutive stems each."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name[1:-2], []).append(name)
    return groups


def write_sources(root: Path, names: Sequence[str]) -> None:
    src = root / "src"
    src.mkdir(parents=True)
    for i, name in enumerate(names):
        path = src / f"{name}.txt"
        path.write_text(f"{i}\n")
        os.utime(path, (OLD_MTIME_S, OLD_MTIME_S))


def majordomo_toml(names: Sequence[str]) -> str:
    lines = [
        "[project]", 'default = ["build/all.txt"]', "",
        "[[rule]]", 'name = "copy"', 'inputs = ["src/%.txt"]', 'outputs = ["build/%.out"]', 'command = "cp $< $@"',
    ]
    for key in _groups(names):
        glob = f"build/f{key}" + "?" * (len(names[0]) - 1 - len(key)) + ".out"
        lines += ["", "[[step]]", f'name = "agg-{key}"', f'inputs = ["{glob}"]', f'outputs = ["build/agg/{key}.txt"]',
                  'command = "cat $^ > $@"']
    lines += ["", "[[step]]", 'name = "all"', 'inputs = ["build/agg/*.txt"]', 'outputs = ["build/all.txt"]',
              'command = "cat $^ > $@"', ""]
    return "\n".join(lines)


def build_ninja(names: Sequence[str]) -> str:
    lines = ["rule cp", "  command = cp $in $out", "rule cat", "  command = cat $in > $out", ""]
    lines += [f"build build/{n}.out: cp src/{n}.txt" for n in names]
    groups = _groups(names)
    for key, members in groups.items():
        lines.append(f"build build/agg/{key}.txt: cat " + " ".join(f"build/{n}.out" for n in members))
    lines.append("build build/all.txt: cat " + " ".join(f"build/agg/{k}.txt" for k in groups))
    lines += ["default build/all.txt", ""]
    return "\n".join(lines)


def makefile(names: Sequence[str]) -> str:
    groups = _groups(names)
    lines = [
        "MAKEFLAGS += --no-builtin-rules", ".SUFFIXES:", "", "all: build/all.txt", "",
        "build/agg:", "\tmkdir -p $@", "",
        "build/%.out: src/%.txt | build/agg", "\tcp $< $@", "",
        "build/all.txt: " + " ".join(f"build/agg/{k}.txt" for k in groups), "\tcat $^ > $@", "",
    ]
    for key, members in groups.items():
        lines += [f"build/agg/{key}.txt: " + " ".join(f"build/{n}.out" for n in members), "\tcat $^ > $@"]
    lines += ["", ".PHONY: all", ""]
    return "\n".join(lines)


@dataclass
class Projects:
    md: Path
    ninja: Path
    make: Path
    names: list[str]


def generate(base: Path, n: int) -> Projects:
    names = _names(n)
    projects = Projects(base / "majordomo", base / "ninja", base / "make", names)
    for root, file, text in (
        (projects.md, "majordomo.toml", majordomo_toml(names)),
        (projects.ninja, "build.ninja", build_ninja(names)),
        (projects.make, "Makefile", makefile(names)),
    ):
        write_sources(root, names)
        (root / file).write_text(text)
    return projects


# -- running and timing -------------------------------------------------------------------------


class BenchError(Exception):
    """A build failed or did something other than what the phase expects."""


def _ninja_binary() -> str:
    """The real ninja binary, not a wrapper (a pyenv shim alone costs tens of ms per call)."""
    try:
        import ninja

        candidate = Path(ninja.BIN_DIR) / "ninja"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("ninja")
    if not found:
        raise SystemExit("ninja is not installed (pip install ninja)")
    return found


def _majordomo_env(config_home: Path) -> dict[str, str]:
    """Embedded federation, this checkout's code, no user config that could name a NATS URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAJORDOMO_NATS", "MAJORDOMO_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["XDG_CONFIG_HOME"] = str(config_home)
    return env


@dataclass
class Tool:
    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] | None = None
    ok_codes: tuple[int, ...] = (0,)

    def run(self, extra: Sequence[str] = ()) -> tuple[float, str]:
        """Wall seconds of one run, and its stdout+stderr."""
        start = time.perf_counter()
        proc = subprocess.run([*self.argv, *extra], cwd=self.cwd, env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        output = proc.stdout + proc.stderr
        if proc.returncode not in self.ok_codes:
            raise BenchError(f"{self.label} exited {proc.returncode} in {self.cwd}:\n{output[-2000:]}")
        return elapsed, output


_SUMMARY_RE = re.compile(r"build ok: (\d+) run, (\d+) cached")


def steps_run(output: str) -> int | None:
    """Steps a majordomo build ran, from its summary line."""
    match = _SUMMARY_RE.search(output)
    return int(match.group(1)) if match else None


@dataclass
class Row:
    phase: str
    tool: str
    seconds: float
    ninja_s: float
    target: float | None = None  # max ratio against ninja; None: informational
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.seconds / self.ninja_s

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        return "PASS" if self.ratio <= self.target else "MISS"


def print_table(rows: Sequence[Row]) -> None:
    print(f"\n{'phase':<10} {'tool':<36} {'best s':>9} {'vs ninja':>9} {'target':>8}  {'result':<6} note")
    for r in rows:
        target = f"<={r.target:g}x" if r.target is not None else "-"
        print(f"{r.phase:<10} {r.tool:<36} {r.seconds:>9.3f} {r.ratio:>8.2f}x {target:>8}  {r.verdict:<6} {r.note}")


def measure(rounds: int, tools: Sequence[Tool], prepare: Callable[[Tool, int], None] | None = None,
            check: Callable[[Tool, str], None] | None = None, stop_after_s: float | None = None,
            ) -> dict[str, list[float]]:
    """Rounds interleave the tools (so load drift hits all alike); `prepare` runs untimed before each run.

    With `stop_after_s`, a tool is not repeated once one of its runs took longer than that.
    """
    samples: dict[str, list[float]] = {t.label: [] for t in tools}
    for round_ in range(rounds):
        for tool in tools:
            if stop_after_s is not None and samples[tool.label] and min(samples[tool.label]) > stop_after_s:
                continue
            if prepare:
                prepare(tool, round_)
            seconds, output = tool.run()
            if check:
                check(tool, output)
            samples[tool.label].append(seconds)
    return samples


# -- profiling the no-op -------------------------------------------------------------------------

_IMPORT_RE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
_WRAPPERS = ("<frozen ", "runpy", "asyncio/", "selectors.py", "builtins.exec", "_contextvars", "<string>",
             "cli.py:1(<module>)")
# (file, function) pairs whose cumulative time splits a no-op into phases; looked up by name, as code
# moves, and left out when absent.
_PHASES = (
    ("majordomo/cli.py", "main"), ("majordomo/cli.py", "_load"), ("majordomo/recipes.py", "load_project"),
    ("majordomo/recipes.py", "list_project_files"), ("majordomo/state.py", "__init__"),
    ("majordomo/state.py", "load_stat_cache"), ("majordomo/state.py", "load_steps"), ("majordomo/graph.py", "__init__"),
    ("majordomo/graph.py", "order"), ("majordomo/graph.py", "units"), ("majordomo/engine.py", "_scan_sources"),
    ("majordomo/scan.py", "scan"), ("artefacts/hashing.py", "hash_files"), ("majordomo/engine.py", "_execute"),
    ("majordomo/engine.py", "_try_cached"), ("majordomo/engine.py", "_local_toolchain"),
    ("protocol/kinds.py", "step_tools"), ("artefacts/toolprobe.py", "cached_identity"),
    ("majordomo/engine.py", "_inputs_of"), ("majordomo/engine.py", "_key"), ("majordomo/state.py", "result"),
    ("majordomo/engine.py", "_materialized"), ("majordomo/state.py", "close"),
)


def import_profile(md: Tool, out_dir: Path) -> list[str]:
    argv = [sys.executable, "-X", "importtime", *md.argv[1:]]
    proc = subprocess.run(argv, cwd=md.cwd, env=md.env, capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    (out_dir / "noop-importtime.txt").write_text("\n".join(lines) + "\n")
    parsed = []
    for ln in lines:
        if m := _IMPORT_RE.match(ln):
            parsed.append((int(m.group(2)), int(m.group(1)), len(m.group(3)) // 2, m.group(4)))
    total_us = sum(cum for cum, _, depth, _ in parsed if depth == 0)
    report = [f"imports: {len(parsed)} modules, {total_us / 1000:.0f} ms in total (top-level cumulative sum)",
              f"{'cumul ms':>9} {'self ms':>8}  module (indent = nesting)"]
    for cum, self_us, depth, name in sorted(parsed, reverse=True)[:10]:
        report.append(f"{cum / 1000:>9.1f} {self_us / 1000:>8.1f}  {'  ' * depth}{name}")
    return report


def _label(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":
        return func
    return f"{os.path.relpath(file, REPO) if file.startswith(str(REPO)) else Path(file).name}:{line}({func})"


def cprofile(md: Tool, out_dir: Path) -> list[str]:
    prof = out_dir / "noop.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(prof), *md.argv[1:]]
    start = time.perf_counter()
    subprocess.run(argv, cwd=md.cwd, env=md.env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    with open(out_dir / "noop-cprofile.txt", "w") as text:
        pstats.Stats(str(prof), stream=text).sort_stats("cumulative").print_stats(60)
        pstats.Stats(str(prof), stream=text).sort_stats("tottime").print_stats(40)
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    total = max(ct for _, _, _, ct, _ in stats.values())
    report = [f"cProfile: {total:.2f} s profiled ({wall:.2f} s wall; profiling inflates Python-heavy code ~3x)",
              f"{'cumtime':>8} {'share':>6} {'tottime':>8} {'calls':>8}  function (top 15 by cumtime, "
              "runpy/asyncio/import wrappers left out)"]
    ranked = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)
    shown = 0
    for key, (_cc, nc, tt, ct, _callers) in ranked:
        label = _label(key)
        if any(w in label or w in key[0] for w in _WRAPPERS) or "_bootstrap" in key[0]:
            continue
        report.append(f"{ct:>8.3f} {ct / total:>6.1%} {tt:>8.3f} {nc:>8}  {label}")
        shown += 1
        if shown == 15:
            break
    phases = []
    for suffix, func in _PHASES:
        for key, (_cc, nc, _tt, ct, _callers) in stats.items():
            if key[2] == func and key[0].endswith(suffix):
                phases.append(f"{ct:>8.3f} {ct / total:>6.1%} {nc:>8}  {_label(key)}")
                break
    report += ["", "no-op phases (cumtime, profiled):", *phases]
    return report


# -- the run --------------------------------------------------------------------------------------


def _writable(func: Callable[..., object], path: str, _exc: object) -> None:
    """rmtree helper: chef stores keep 0444 files and may keep read-only directories."""
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o755)
    func(path)


def in_workdir(bench: str, keep: Path | None, run: Callable[[Path], bool],
               errors: tuple[type[BaseException], ...] = (BenchError,)) -> NoReturn:
    """Run a bench in `keep` (kept) or a fresh temp dir (removed), report errors as one line, and
    exit 0 when every target was met, 1 otherwise."""
    if keep:
        keep.mkdir(parents=True)
    base = keep or Path(tempfile.mkdtemp(prefix=f"bench-{bench}-"))
    try:
        ok = run(base.resolve())
    except errors as exc:
        raise SystemExit(f"bench.{bench}: {exc}") from None
    finally:
        if not keep:
            shutil.rmtree(base, onerror=_writable)
    raise SystemExit(0 if ok else 1)


def _wipe(root: Path) -> None:
    for name in ("build", ".majordomo", ".ninja_log", ".ninja_deps"):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, onerror=_writable)
        elif path.exists():
            path.unlink()


def _ran(tool: Tool, output: str) -> int | None:
    """Steps a build ran: majordomo's summary, ninja's `[i/n]` lines, make's echoed commands."""
    if tool.argv[0] == "make":
        return sum(1 for line in output.splitlines() if line.startswith(("cp ", "cat ")))
    found = steps_run(output)
    return found if found is not None else len(re.findall(r"^\[\d+/\d+\]", output, re.M))


def _same_outputs(projects: Projects) -> None:
    outs = {p.name: (p / "build" / "all.txt").read_bytes() for p in (projects.md, projects.ninja, projects.make)}
    if len(set(outs.values())) != 1:
        raise BenchError(f"build/all.txt differs between the projects: { {k: len(v) for k, v in outs.items()} }")


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout
    except OSError:
        return "?"
    return out.splitlines()[0] if out else "?"


def run(base: Path, n: int, rounds: int, profile: bool) -> list[Row]:
    started = time.perf_counter()
    projects = generate(base, n)
    total = n + len(_groups(projects.names)) + 1
    ninja_bin = _ninja_binary()
    print(f"{n:,} sources, {total:,} steps per tool ({n:,} cp, {total - n - 1} cat of <= {GROUP}, 1 final cat);"
          f" generated in {time.perf_counter() - started:.1f} s under {base}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpus {os.cpu_count()}, load {load}; python {sys.version.split()[0]};"
          f" ninja {_version([ninja_bin, '--version'])} (default -j); {_version(['make', '--version'])}")
    config_home = base / "config"
    config_home.mkdir()
    env = _majordomo_env(config_home)
    md = Tool("majordomo build -q", [sys.executable, "-m", "majordomo.cli", "build", "-q"], projects.md, env)
    ninja = Tool("ninja", [ninja_bin], projects.ninja)
    make = Tool("make -j2", ["make", "-j2"], projects.make)
    make_q = Tool("make -q", ["make", "-q"], projects.make)
    rows: list[Row] = []

    def report(phase: str, samples: dict[str, list[float]], targets: dict[str, float],
               notes: dict[str, str] | None = None) -> None:
        ninja_s = min(samples[ninja.label])
        for label, values in samples.items():
            note = (notes or {}).get(label, "")
            rows.append(Row(phase, label, min(values), ninja_s, targets.get(label), note, values))
        for label, values in samples.items():
            print(f"  {phase:<8} {label:<36} " + "  ".join(f"{v:.3f}" for v in values))

    ran: dict[str, int | None] = {}

    def expect(phase: str, md_steps: int | None) -> Callable[[Tool, str], None]:
        def check(tool: Tool, output: str) -> None:
            ran[tool.label] = _ran(tool, output)
            if tool.label.startswith("majordomo") and md_steps is not None and ran[tool.label] != md_steps:
                raise BenchError(f"{phase}: {tool.label} ran {ran[tool.label]} steps, expected {md_steps}:\n"
                                 f"{output[-2000:]}")
            if tool is ninja and phase == "no-op" and "no work to do" not in output:
                raise BenchError(f"no-op: ninja did some work:\n{output[-2000:]}")
        return check

    print(f"\n1. clean build (repeated only while a run takes < {CHEAP_S:g} s)")
    samples = measure(rounds, [md, ninja, make], prepare=lambda t, _r: _wipe(t.cwd), check=expect("clean", total),
                      stop_after_s=CHEAP_S)
    report("clean", samples, {}, {k: f"{min(v) / total * 1e3:.2f} ms/step" for k, v in samples.items()})
    _same_outputs(projects)

    # Start-up variants: `python -m`, the installed entry point, and whatever `majordomo` on PATH is.
    variants = [Tool("majordomo (python -m majordomo.cli)", md.argv, md.cwd, env)]
    entry = Path(sys.executable).parent / "majordomo"
    if entry.is_file():
        variants.append(Tool("majordomo (entry point)", [str(entry), "build", "-q"], md.cwd, env))
    on_path = shutil.which("majordomo")
    if on_path and (not entry.is_file() or not os.path.samefile(on_path, entry)):
        variants.append(Tool(f"majordomo (PATH {Path(on_path).parent.name}/)", [on_path, "build", "-q"], md.cwd, env))
    print("\n2. no-op")
    floor = Tool("python -c pass (start-up floor)", [sys.executable, "-c", "pass"], md.cwd, env)
    samples = measure(rounds, [*variants, ninja, make_q, floor], check=expect("no-op", 0))
    report("no-op", samples, {v.label: NOOP_TARGET for v in variants})

    if profile:
        OUT_DIR.mkdir(exist_ok=True)
        print(f"\nno-op profile (raw files in {os.path.relpath(OUT_DIR)}/)")
        for line in [*import_profile(md, OUT_DIR), "", *cprofile(md, OUT_DIR)]:
            print("  " + line)

    rel = f"src/{projects.names[min(TOUCHED, n - 1)]}.txt"
    print(f"\n3a. {rel} touched (os.utime, same bytes)")
    samples = measure(rounds, [md, ninja, make], prepare=lambda t, _r: os.utime(t.cwd / rel),
                      check=expect("touched", 0))
    notes = {k: f"ran {ran.get(k)}" for k in samples}
    report("touched", samples, {md.label: REBUILD_TARGET}, notes)

    print(f"\n3b. {rel} changed (new bytes: 1 cp + 1 cat + final cat rerun)")
    samples = measure(rounds, [md, ninja, make],
                      prepare=lambda t, r: (t.cwd / rel).write_text(f"changed {r}\n"), check=expect("changed", 3))
    notes = {k: f"ran {ran.get(k)}" for k in samples}
    notes[md.label] += ", in the resident build server"
    report("changed", samples, {md.label: REBUILD_TARGET}, notes)
    _same_outputs(projects)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000, help="number of sources (cp steps); default 10,000")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the best counts")
    parser.add_argument("--keep", type=Path, default=None, help="build in this (new) directory and keep it")
    parser.add_argument("--no-profile", action="store_true", help="skip the no-op importtime/cProfile runs")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    if args.keep:
        args.keep.mkdir(parents=True)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        rows = run(base.resolve(), args.steps, args.rounds, not args.no_profile)
    except BenchError as exc:
        raise SystemExit(f"bench.incremental: {exc}") from None
    finally:
        if not args.keep:
            shutil.rmtree(base, onerror=_writable)
    print_table(rows)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "incremental.json").write_text(json.dumps(
        {"steps": args.steps, "rounds": args.rounds, "rows": [asdict(r) | {"ratio": r.ratio, "verdict": r.verdict}
                                                             for r in rows]}, indent=1))
    raise SystemExit(0 if all(r.verdict != "MISS" for r in rows) else 1)


if __name__ == "__main__":
    main()
