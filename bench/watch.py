"""`majordomo watch` latency (issue 3): from a source's save to the rebuilt output, vs ninja.

    python -m bench.watch [--steps 10000] [--rounds 12] [--keep DIR] [--profile]

Issue 3's benchmarks all run on one generated project of 10,000 small steps, so that is the
default here (ninja's no-op on it is ~32 ms). Generates, in a temp dir, two sibling projects with
identical sources: N files `src/fNNN.txt` and one pattern rule `cp $< $@` to `build/fNNN.out`
(N steps, every output final, so the watch fetches each rebuilt output into the workspace), as
`majordomo.toml` and as `build.ninja`.

The majordomo project is built once (`majordomo build -q`), then `majordomo watch` is started on it
and left running (embedded federation, this checkout's code, a fresh user config). Each round:
1. peers, measured right then (so load drift hits all alike), in the ninja project:
   - `ninja` no-op, and the step alone: `/bin/sh -c "cp src/fK.txt build/fK.out"` (what ninja runs);
   - `ninja` after the same change (informational: what ninja does for this edit);
2. the watch: source K gets new bytes (open, write, close); the clock starts after close and stops
   when `build/fK.out` holds the new bytes (polled with os.stat every 0.2 ms, read on change,
   bounded by a timeout). The watch's own lines (`changed: ...`, `build ok: ...`) are time-stamped
   as they arrive, which splits the latency into detection (inotify + debounce) and the rebuild.
Round 0 starts the embedded federation (the first step to run does) and is reported apart.

Target (issue 3): save-to-output < ninja's no-op + the step's own run time; compared median with
median and best with best. `--profile` then rebuilds the same project in this process, as the
watch does (recipes loaded, one Build on a shared Federation), with wall-clock wrappers on the
engine's phases (found by name), and prints where a rebuild's time goes.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.incremental import OLD_MTIME_S, REPO, BenchError, _majordomo_env, _ninja_binary, in_workdir

READY_TIMEOUT_S = 180.0  # watch start-up: load, scan, first (no-op) build
ROUND_TIMEOUT_S = 30.0  # save to rebuilt output, worst case (round 0 starts the federation)
POLL_S = 0.0002
SETTLE_S = 0.3  # idle time between rounds, so each save meets a watch that is waiting


def _names(n: int) -> list[str]:
    width = max(3, len(str(n - 1)))
    return [f"f{i:0{width}d}" for i in range(n)]


def generate(base: Path, n: int) -> tuple[Path, Path, list[str]]:
    names = _names(n)
    md, nj = base / "majordomo", base / "ninja"
    for root in (md, nj):
        (root / "src").mkdir(parents=True)
        for i, name in enumerate(names):
            path = root / "src" / f"{name}.txt"
            path.write_text(f"{i}\n")
            os.utime(path, (OLD_MTIME_S, OLD_MTIME_S))
    (md / "majordomo.toml").write_text(
        '[[rule]]\nname = "copy"\ninputs = ["src/%.txt"]\noutputs = ["build/%.out"]\ncommand = "cp $< $@"\n')
    (nj / "build.ninja").write_text("rule cp\n  command = cp $in $out\n\n"
                                    + "".join(f"build build/{n}.out: cp src/{n}.txt\n" for n in names))
    return md, nj, names


def _timed(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


class Watch:
    """A running `majordomo watch`, its stdout lines time-stamped on arrival."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line.rstrip("\n")))

    def until(self, prefix: str, timeout: float) -> list[tuple[float, str]]:
        """Lines up to and including the first starting with `prefix`."""
        seen: list[tuple[float, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                at, line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise BenchError(f"watch printed no {prefix!r} within {timeout:g} s; last lines:\n"
                                 + "\n".join(self.log[-15:])) from None
            self.log.append(line)
            seen.append((at, line))
            if line.startswith(prefix):
                return seen

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; escalate only if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _strays(marker: Path) -> list[int]:
    """Processes whose command line names the project's .majordomo dir (its chefs, its nats-server)."""
    needle = str(marker).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _reap_strays(project: Path) -> list[int]:
    pids = _strays(project / ".majordomo")
    for pid in pids:  # only ever processes our watch started under this temp project
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def wait_for_bytes(path: Path, expected: bytes, timeout: float) -> float:
    """perf_counter() at which `path` first holds `expected` (outputs are renamed into place)."""
    deadline = time.perf_counter() + timeout
    last: tuple[int, int, int] | None = None
    while True:
        now = time.perf_counter()
        try:
            st = os.stat(path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if sig != last:
                last = sig
                if path.read_bytes() == expected:
                    return now
        except FileNotFoundError:
            pass
        if now > deadline:
            raise BenchError(f"{path} did not get the new bytes within {timeout:g} s")
        time.sleep(POLL_S)


@dataclass
class Round:
    save_to_output: float
    detect: float | None  # save to the watch's `changed:` line
    to_summary: float | None  # save to its `build ok:` line
    ninja_noop: float
    step_alone: float
    ninja_changed: float
    ran: str = ""
    lines: list[str] = field(default_factory=list)


def one_round(r: int, watch: Watch, md: Path, nj: Path, names: Sequence[str], ninja_bin: str) -> Round:
    name = names[(r * 37 + 11) % len(names)]
    rel_src, rel_out = f"src/{name}.txt", f"build/{name}.out"
    # Peers first, in the ninja project, while the watch waits.
    noop_s, out = _timed([ninja_bin], nj)
    if "no work to do" not in out:
        raise BenchError(f"ninja no-op did work:\n{out[-1000:]}")
    step_s, _ = _timed(["/bin/sh", "-c", f"cp {rel_src} {rel_out}"], nj)
    (nj / rel_src).write_bytes(f"round {r} {time.time_ns()}\n".encode())
    changed_s, out = _timed([ninja_bin], nj)
    if "[1/1]" not in out:
        raise BenchError(f"ninja after one change did not run exactly one step:\n{out[-1000:]}")
    time.sleep(SETTLE_S)
    while not watch.lines.empty():  # nothing may be pending from before the save
        watch.log.append(watch.lines.get_nowait()[1])
    # The save, then the output.
    payload = f"round {r} {time.time_ns()}\n".encode()
    with open(md / rel_src, "wb") as f:
        f.write(payload)
    saved = time.perf_counter()
    done = wait_for_bytes(md / rel_out, payload, ROUND_TIMEOUT_S)
    lines = watch.until("watching for changes", ROUND_TIMEOUT_S)
    detect = next((at - saved for at, ln in lines if ln.startswith("changed:")), None)
    summary = next((at - saved for at, ln in lines if ln.startswith("build ok")), None)
    if not any(ln.startswith("build ok: 1 run") for _, ln in lines):
        raise BenchError(f"round {r}: the watch did not report exactly one step run:\n"
                         + "\n".join(ln for _, ln in lines))
    ran = next((ln.split("ran", 1)[1].strip() for _, ln in lines if " ran " in ln), "")
    return Round(done - saved, detect, summary, noop_s, step_s, changed_s, ran, [ln for _, ln in lines])


def _ms(x: float | None) -> str:
    return f"{x * 1e3:.1f}" if x is not None else "-"


def report(rounds: Sequence[Round], warm: Round) -> bool:
    print(f"\n{'round':>5} {'save->output ms':>15} {'->changed: ms':>13} {'->build ok ms':>13} {'ninja noop ms':>13}"
          f" {'step alone ms':>13} {'ninja 1-change ms':>17}  step")
    for i, r in enumerate([warm, *rounds]):
        label = "0*" if i == 0 else str(i)
        print(f"{label:>5} {_ms(r.save_to_output):>15} {_ms(r.detect):>13} {_ms(r.to_summary):>13}"
              f" {_ms(r.ninja_noop):>13} {_ms(r.step_alone):>13} {_ms(r.ninja_changed):>17}  {r.ran}")
    print("  * round 0 starts the embedded federation; left out of the figures below")

    def col(attr: str) -> list[float]:
        return [v for r in rounds if (v := getattr(r, attr)) is not None]

    ours, noop, step, changed = col("save_to_output"), col("ninja_noop"), col("step_alone"), col("ninja_changed")
    detect = col("detect")
    ok = True
    print(f"\n{'statistic':<8} {'watch save->output':>19} {'ninja no-op':>12} {'step alone':>11} {'target':>9}"
          f" {'ratio':>7}  {'result':<6} {'ninja 1-change':>14} {'changed: line':>14}")
    for stat, fn in (("median", statistics.median), ("best", min)):
        target = fn(noop) + fn(step)
        verdict = "PASS" if fn(ours) < target else "MISS"
        ok = ok and verdict == "PASS"
        shown = f"{fn(detect) * 1e3:>11.1f} ms" if detect else f"{'-':>14}"
        print(f"{stat:<8} {fn(ours) * 1e3:>16.1f} ms {fn(noop) * 1e3:>9.1f} ms {fn(step) * 1e3:>8.1f} ms"
              f" {target * 1e3:>6.1f} ms {fn(ours) / target:>6.2f}x  {verdict:<6} {fn(changed) * 1e3:>11.1f} ms"
              f" {shown}")
    print(f"worst   {max(ours) * 1e3:>16.1f} ms   (target: watch < ninja no-op + step alone, same statistic)")
    return ok


# (class, method) pairs timed by `--phases`; looked up by name, as code moves, and left out when absent.
_PHASES = (
    ("Build", "prepare"), ("Build", "_scan_sources"), ("Build", "_remove_stale_outputs"), ("Build", "_execute"),
    ("Build", "_try_cached"), ("Build", "_run_step"), ("Build", "_federation"), ("Build", "_ensure_available"),
    ("Build", "_place"), ("Build", "_dispatch"), ("Build", "_accept_result"), ("Build", "_materialize"),
    ("Puller", "fetch_to"), ("State", "record_result"), ("State", "record_produced"), ("State", "record_build"),
)


def _wrap(cls: type, name: str, records: list[tuple[str, float, float]]) -> bool:
    import functools
    import inspect

    fn = getattr(cls, name, None)
    if fn is None:
        return False
    label = f"{cls.__name__}.{name}"
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def timed_async(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                records.append((label, start, time.perf_counter()))
        setattr(cls, name, timed_async)
    else:
        @functools.wraps(fn)
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                records.append((label, start, time.perf_counter()))
        setattr(cls, name, timed)
    return True


def phases(md: Path, names: Sequence[str], rounds: int) -> None:
    """What `watch` does per change, in this process: load the recipes, then one Build on a shared
    Federation (as majordomo/watch.py does), with wall-clock wrappers on the engine's phases.
    Prints, per phase, the median start offset and duration over `rounds` changes (round 0, which
    starts the federation, left out). Wrappers nest: a phase's time includes the phases within it."""
    import asyncio

    from artefacts import sftp_client
    from majordomo.cli import _source_lister
    from majordomo.engine import Build, BuildOptions
    from majordomo.federation import Federation
    from majordomo.recipes import load_project
    from majordomo.state import State

    records: list[tuple[str, float, float]] = []
    classes = {"Build": Build, "State": State, "Puller": getattr(sftp_client, "Puller", None)}
    missing = [f"{c}.{m}" for c, m in _PHASES if classes.get(c) is None or not _wrap(classes[c], m, records)]
    per_round: list[dict[str, tuple[float, float]]] = []

    async def session() -> None:
        state = State(md)
        fed = Federation(md, "", None)
        lister = _source_lister(md)
        try:
            for r in range(rounds + 1):
                name = names[(r * 53 + 7) % len(names)]
                payload = f"phases {r} {time.time_ns()}\n".encode()
                (md / "src" / f"{name}.txt").write_bytes(payload)
                records.clear()
                t0 = time.perf_counter()
                project = load_project(md, recipe_file="majordomo.toml", overrides={}, list_files=lister)
                records.append(("load_project (recipes)", t0, time.perf_counter()))
                build = Build(project, state, BuildOptions(), shared=fed)
                fed.pod_id = build.pod_id
                report = await build.run()
                records.append(("whole rebuild", t0, time.perf_counter()))
                if report.steps_run != 1 or (md / "build" / f"{name}.out").read_bytes() != payload:
                    raise BenchError(f"phases round {r}: ran {report.steps_run}, output not the new bytes")
                if r:
                    seen: dict[str, tuple[float, float]] = {}
                    for label, a, b in records:  # first start, summed time
                        first, total = seen.get(label, (a - t0, 0.0))
                        seen[label] = (min(first, a - t0), total + b - a)
                    per_round.append(seen)
        finally:
            await fed.stop()
            state.close()

    asyncio.run(session())
    labels = sorted({k for r in per_round for k in r}, key=lambda k: statistics.median(
        r[k][0] for r in per_round if k in r))
    print(f"  {'phase (nested; sums over calls)':<34} {'starts at ms':>12} {'takes ms':>9}"
          f"   median of {rounds} rebuilds")
    for label in labels:
        got = [r[label] for r in per_round if label in r]
        print(f"  {label:<34} {statistics.median(x[0] for x in got) * 1e3:>12.2f}"
              f" {statistics.median(x[1] for x in got) * 1e3:>9.2f}")
    if missing:
        print(f"  (not found, so not timed: {', '.join(missing)})")


def run(base: Path, n: int, n_rounds: int, profile: bool) -> bool:
    md, nj, names = generate(base, n)
    ninja_bin = _ninja_binary()
    config = base / "config"
    config.mkdir()
    env = _majordomo_env(config)
    print(f"{n} sources, {n} pattern steps (cp) per tool, every output final; under {base}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.1f}' for x in os.getloadavg())};"
          f" python {sys.version.split()[0]}; ninja {ninja_bin}")
    clean_md, _ = _timed([sys.executable, "-m", "majordomo.cli", "build", "-q", "-C", str(md)], REPO, env)
    clean_nj, _ = _timed([ninja_bin], nj)
    print(f"clean builds: majordomo {clean_md:.2f} s, ninja {clean_nj:.3f} s (not part of the figures)")
    argv = [sys.executable, "-m", "majordomo.cli", "watch", "-C", str(md), "--rescan", "600"]
    watch = Watch(argv, REPO, env)
    try:
        start = time.perf_counter()
        first = watch.until("watching for changes", READY_TIMEOUT_S)
        print(f"watch ready in {time.perf_counter() - start:.2f} s: "
              + "; ".join(ln for _, ln in first if ln.startswith("build")))
        warm = one_round(0, watch, md, nj, names, ninja_bin)
        rounds = [one_round(r, watch, md, nj, names, ninja_bin) for r in range(1, n_rounds + 1)]
    finally:
        code = watch.stop()
        strays = _reap_strays(md)
    print(f"watch stopped by SIGINT: exit {code}; stray processes left: {len(strays)}")
    ok = report(rounds, warm)
    if profile:
        print("\nwhere a rebuild's time goes (the same project, rebuilt in this process as watch does):")
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        os.environ.pop("MAJORDOMO_NATS", None)
        try:
            phases(md, names, min(n_rounds, 10))
        finally:
            _reap_strays(md)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000,
                        help="number of sources (pattern steps); default 10,000, the issue's project")
    parser.add_argument("--rounds", type=int, default=12, help="measured rounds (after the warm-up round)")
    parser.add_argument("--keep", type=Path, default=None, help="build in this (new) directory and keep it")
    parser.add_argument("--profile", action="store_true",
                        help="also time a rebuild's phases in-process (the engine's steps, wrapped by name)")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1")
    in_workdir("watch", args.keep, lambda base: run(base, args.steps, args.rounds, args.profile), (BenchError,))


if __name__ == "__main__":
    main()
