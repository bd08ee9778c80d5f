"""The 2,000-step tiny-step build with the web dashboard open vs without it (issue 6): within 5%.

    python -m bench.events [--steps 2000] [--rounds 4] [--keep DIR] [--profile]

An external federation, started as tests/conftest.py does: a real nats-server with JetStream
(EmbeddedNats, on its own event-loop thread) and two real chef processes (`python -m chefs.cli`,
kinds shell and cc, 2 slots each, one federation key). The project is bench.federation's graph
(N `cp` steps, N/100 `cat`, one final `cat`); every command ends in `# $SALT`, and each build
passes a new `--var SALT=...`, so every build runs all its steps (the federation's action cache
outlives builds); every source gets new bytes before each build too, so the chefs pull all of them
again, as in bench.federation's clean builds. Each build is clean (`build/` and `.majordomo/`
removed) and runs `majordomo build -q --nats URL` with MAJORDOMO_KEY.

Rounds interleave the two arms, ABBA (so drift hits both alike):
- with: `majordomo dashboard --nats URL --port 0` is started before the build, and an HTTP client
  (a thread of this bench) reads its SSE stream `/events` from the snapshot on; the dashboard stops
  after the build (its start and stop are not timed); its CPU and the SSE bytes/messages are shown;
- without: no dashboard process at all.
The build publishes its events in both arms (there is no switch to turn them off); what the
dashboard adds is a subscriber to every event, its model, the page's stream, and its
registry/$SRV.STATS polling. Target: median (and best) wall time with <= 1.05x without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.federation import Sample, generate, run_majordomo, total_steps
from bench.incremental import OLD_MTIME_S, REPO, BenchError, _majordomo_env, _wipe, in_workdir

OUT_DIR = Path(__file__).resolve().parent / "out"
TARGET = 1.05
START_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread, for EmbeddedNats (it drains the server's log as it runs)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def proc_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds of a live process: its own (utime stime), plus its waited-for children's (cutime cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15 if children else 13]) / CLK_TCK


def _first_line(proc: subprocess.Popen[str], what: str, timeout: float) -> str:
    """The first stdout line of `proc`, read on a thread so the wait is bounded; later lines are drained."""
    got: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout
        got.append(proc.stdout.readline())
        ready.set()
        for _ in proc.stdout:  # keep the pipe from filling
            pass

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or not got[0]:
        raise BenchError(f"{what} did not start within {timeout:g} s (exit {proc.poll()})")
    return got[0].strip()


def stop_procs(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Federation:
    url: str
    key: Path
    nats_pid: int
    chefs: list[subprocess.Popen[str]] = field(default_factory=list)


def start_chef(url: str, home: Path, chef_id: str, key: Path, logs: Path,
               profile: Path | None = None) -> subprocess.Popen[str]:
    """A chef as tests/conftest.py starts one (no hand-over on SIGTERM: the federation is thrown away)."""
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    with open(logs / f"{chef_id}.log", "ab") as log:
        proc = subprocess.Popen(
            [*python, "-m", "chefs.cli", "--nats", url, "--id", chef_id, "--home", str(home),
             "--key", str(key), "--authorized-keys", str(key) + ".pub", "--kind", "shell", "--kind", "cc",
             "--slots", str(os.cpu_count() or 1), "--no-hand-over"],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, start_new_session=True)
    try:
        line = _first_line(proc, f"chef {chef_id}", START_TIMEOUT_S)
    except BenchError:
        stop_procs([proc])
        raise
    if "ready" not in line:
        stop_procs([proc])
        raise BenchError(f"chef {chef_id} said {line!r}: {(logs / f'{chef_id}.log').read_text()[-800:]}")
    return proc


class SseReader:
    """Reads the dashboard's /events stream on a thread, as a browser's EventSource would."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT_S)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
                          .encode())
        self.sock.settimeout(0.5)
        self.bytes = 0
        self.messages: dict[str, int] = {}
        self.snapshot = threading.Event()
        self._stop = threading.Event()
        self._tail = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.bytes += len(chunk)
            data = self._tail + chunk
            for name in re.findall(rb"(?:^|\n)event: ([a-z]+)\n", data):
                self.messages[name.decode()] = self.messages.get(name.decode(), 0) + 1
                if name == b"snapshot":
                    self.snapshot.set()
            cut = data.rfind(b"\n\n")
            self._tail = data[cut + 1:] if cut >= 0 else data[-4096:]

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


@dataclass
class Dashboard:
    proc: subprocess.Popen[str]
    port: int
    reader: SseReader

    @classmethod
    def start(cls, url: str, env: dict[str, str], logs: Path) -> Dashboard:
        with open(logs / "dashboard.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "majordomo.cli", "dashboard", "--nats", url, "--port", "0"],
                                    stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env,
                                    start_new_session=True)
        try:
            line = _first_line(proc, "majordomo dashboard", START_TIMEOUT_S)
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if not match:
                raise BenchError(f"dashboard said {line!r}")
            port = int(match.group(1))
            reader = SseReader(port)
            if not reader.snapshot.wait(START_TIMEOUT_S):
                reader.close()
                raise BenchError("the dashboard's stream sent no snapshot")
        except BaseException:
            stop_procs([proc])
            raise
        return cls(proc, port, reader)

    def newest_build(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/history", timeout=10) as resp:
            history = json.loads(resp.read())
        return history[0] if history else {}

    def stop(self) -> None:
        self.reader.close()
        stop_procs([self.proc])


@dataclass
class Arm:
    label: str
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def new_sources(md: Path, salt: str) -> None:
    """New bytes in every source, so the chefs pull all of them again, as in bench.federation's clean builds."""
    for i, path in enumerate(sorted((md / "src").iterdir())):
        path.write_text(f"{i} {salt}\n")
        os.utime(path, (OLD_MTIME_S, OLD_MTIME_S))


def one_build(fed: Federation, md: Path, env: dict[str, str], salt: str, base: Path, steps: int,
              logs: Path, with_dashboard: bool) -> tuple[Sample, str]:
    """One clean build; `sample.cpu_all` becomes the CPU of every federation process it used (the
    MajorDomo, nats-server, chefs and their commands, the dashboard if open)."""
    _wipe(md)
    new_sources(md, salt)
    dash = Dashboard.start(fed.url, env, logs) if with_dashboard else None
    try:
        chefs = [c.pid for c in fed.chefs]

        def cpu() -> tuple[float, float, float]:
            own = sum(proc_cpu(p, children=False) for p in chefs)
            return proc_cpu(fed.nats_pid), own, sum(proc_cpu(p) for p in chefs) - own

        before = cpu()
        dash_before = proc_cpu(dash.proc.pid) if dash else 0.0
        sample, out = run_majordomo(md, env, ["-q", "--nats", fed.url, "--var", f"SALT={salt}"], base)
        nats_cpu, chefs_cpu, commands_cpu = (a - b for a, b in zip(cpu(), before, strict=True))
        note = f"cpu: nats {nats_cpu:.2f} s, chefs {chefs_cpu:.2f} s, their commands {commands_cpu:.2f} s"
        sample.cpu_all = (sample.cpu_md or 0.0) + nats_cpu + chefs_cpu + commands_cpu
        if sample.ran != steps:
            raise BenchError(f"the build ran {sample.ran} steps, expected {steps}:\n{out[-2000:]}")
        if dash:
            time.sleep(0.5)  # the last patches (the dashboard flushes every 0.1 s)
            dash_cpu = proc_cpu(dash.proc.pid) - dash_before
            sample.cpu_all += dash_cpu
            seen = dash.newest_build()
            counts = seen.get("counts", {})
            note += (f"; dashboard cpu {dash_cpu:.2f} s, SSE {dash.reader.bytes / 1e6:.2f} MB in"
                     f" {sum(dash.reader.messages.values())} messages; it saw build ok={seen.get('ok')}"
                     f" steps_run={(seen.get('summary') or {}).get('steps_run')} counts={counts}")
            if (seen.get("summary") or {}).get("steps_run") != steps:
                raise BenchError(f"the dashboard did not see the whole build: {seen}")
        return sample, note
    finally:
        if dash:
            dash.stop()


def report(steps: int, arms: list[Arm]) -> bool:
    without, with_ = arms
    print("\nper round:")
    for arm in arms:
        for i, (s, note) in enumerate(zip(arm.samples, arm.notes, strict=True)):
            print(f"  {arm.label:<28} #{i + 1}: wall {s.wall:6.2f} s, MajorDomo cpu {s.cpu_md or 0:.2f} s; {note}")
    ok = True
    print(f"\n{'statistic':<9} {'arm':<28} {'wall s':>8} {'vs without':>10} {'target':>8}  {'result':<6}"
          f" {'ms/step':>8} {'MajorDomo CPU s':>15}")
    for stat, fn in (("median", statistics.median), ("best", min)):
        base = fn([s.wall for s in without.samples])
        for arm, target in ((without, None), (with_, TARGET)):
            wall = fn([s.wall for s in arm.samples])
            verdict = "info" if target is None else ("PASS" if wall / base <= target else "MISS")
            ok = ok and verdict != "MISS"
            cpu = fn([s.cpu_md or 0 for s in arm.samples])
            print(f"{stat:<9} {arm.label:<28} {wall:>8.2f} {wall / base:>9.3f}x"
                  f" {f'<={target:g}x' if target else '-':>8}  {verdict:<6} {wall / steps * 1e3:>8.2f} {cpu:>15.2f}")
    med_without = statistics.median([s.cpu_all for s in without.samples])
    med_with = statistics.median([s.cpu_all for s in with_.samples])
    print(f"\nCPU of every process of the build (MajorDomo, nats-server, chefs and their commands, dashboard),"
          f" median: without {med_without:.2f} s, with {med_with:.2f} s = {med_with / med_without:.3f}x"
          f" (what the wall ratio would be on a machine the build keeps busy)")
    return ok


def run(base: Path, n: int, rounds: int, profile: bool) -> bool:
    from artefacts.keys import load_or_create_key
    from artefacts.natsutil import EmbeddedNats

    md, _nj, _names = generate(base, n, salted=True)
    steps = total_steps(n)
    logs = base / "logs"
    logs.mkdir()
    config = base / "config"
    config.mkdir()
    key = base / "fedkey" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    env = _majordomo_env(config) | {"MAJORDOMO_KEY": str(key)}
    print(f"{steps:,} steps ({n:,} cp, {steps - n - 1} cat, 1 final cat), external federation: nats-server +"
          f" 2 chefs x {os.cpu_count()} slots; under {base}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.1f}' for x in os.getloadavg())};"
          f" python {sys.version.split()[0]}")
    loop = LoopThread()
    server = EmbeddedNats(base / "nats", server_name="bench-events")
    fed: Federation | None = None
    try:
        url = loop.call(server.start())
        assert server._proc is not None
        fed = Federation(url, key, server._proc.pid)
        for chef_id in ("chef-a", "chef-b"):
            fed.chefs.append(start_chef(url, base / "chefs" / chef_id, chef_id, key, logs))
        arms = [Arm("without dashboard"), Arm("with dashboard + SSE reader")]
        # A warm-up build (not counted): first contact fills caches, JetStream buckets, SFTP sessions.
        sample, _ = one_build(fed, md, env, "warmup", base, steps, logs, with_dashboard=False)
        print(f"  warm-up build: {sample.wall:.2f} s")
        for r in range(rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)  # ABBA
            for which in order:
                sample, note = one_build(fed, md, env, f"r{r}a{which}", base, steps, logs, with_dashboard=which == 1)
                arms[which].samples.append(sample)
                arms[which].notes.append(note)
                print(f"  round {r + 1} {arms[which].label}: {sample.wall:.2f} s")
        ok = report(steps, arms)
        if profile:
            print("\nprofile: chef-a restarted under cProfile, one more build without the dashboard")
            stop_procs(fed.chefs[:1])
            OUT_DIR.mkdir(exist_ok=True)
            prof = OUT_DIR / "events-chef.prof"
            prof.unlink(missing_ok=True)
            fed.chefs[0] = start_chef(url, base / "chefs" / "chef-a", "chef-a", key, logs, profile=prof)
            sample, note = one_build(fed, md, env, "profile", base, steps, logs, with_dashboard=False)
            print(f"  profiled build: wall {sample.wall:.2f} s, MajorDomo cpu {sample.cpu_md or 0:.2f} s; {note}")
            stop_procs(fed.chefs[:1])
            print_profile(prof, "chef-a")
    finally:
        if fed:
            stop_procs(fed.chefs)
        loop.call(server.stop())
        loop.close()
    return ok


def print_profile(prof: Path, who: str) -> None:
    """Own time by package or file (main thread only; the event loop's idle select/poll left out)."""
    if not prof.exists():
        print(f"  ({who} wrote no profile)")
        return
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.items():
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
    busy = sum(groups.values())
    print(f"  {who}: {busy:.2f} s profiled outside select/poll (cProfile inflates); raw file {prof}")
    for group, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:15]:
        print(f"  {tt:>8.3f} {tt / busy:>6.1%}  {group}")
    cum = sorted(((ct, nc, f"{os.path.relpath(f, REPO)}:{ln}({fn})") for (f, ln, fn), (_c, nc, _t, ct, _x)
                  in stats.items() if f.startswith(str(REPO))), reverse=True)
    print(f"  {'cumtime':>8} {'calls':>7}  this project's functions by cumulative time (coroutines: per resumption)")
    for ct, nc, label in cum[:20]:
        print(f"  {ct:>8.3f} {nc:>7}  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="number of sources (cp steps); default 2,000")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each builds once with and once without")
    parser.add_argument("--keep", type=Path, default=None, help="build in this (new) directory and keep it")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile one chef (cProfile) through one more build")
    args = parser.parse_args()
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be >= 2 and --rounds >= 1")
    in_workdir("events", args.keep, lambda base: run(base, args.steps, args.rounds, args.profile),
               (BenchError, subprocess.SubprocessError))


if __name__ == "__main__":
    main()
