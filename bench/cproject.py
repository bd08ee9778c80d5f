"""examples/c-project built by majordomo against `make -j2`, measured in one run.

    python -m bench.cproject [--rounds R]

Two copies of examples/c-project in a temp dir. majordomo builds one (embedded federation: its
own nats-server and two chefs, bwrap sandboxes, this checkout's code, an empty user config). The
other gets a Makefile generated here with the same graph: one compile per `.c` (same flags, `-MD`
depfiles), `ar rcsD`, the two links, and the test run. Both build from scratch each round; the
best wall time of R rounds counts. Target: majordomo <= 1.3x `make -j2` on "clean".

"clean" is a clean build with the resident federation up (state and outputs wiped; nats-server,
chefs and build server kept): `make clean && make` during a session. "first" is the same build with
nothing running, so majordomo starts its embedded federation (a project's first build, or the first
after 10 idle minutes); its ratio is printed for information: that start is paid once per session,
as a Bazel server's or a Gradle daemon's is, and is measured apart (docs/architecture.md, "What the
clean-build targets measure").
Informational rows: one library source changed (a new function: one compile, the archive, two
links, the test), and "floor", a majordomo build that reruns the one step of a tiny project (`cp`,
its input changed each round): what any build that runs a step pays to start the CLI and the
embedded federation, to read the ratios against.
Both builds must give the same test report and the same program output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "c-project"
CLEAN_TARGET = 1.3
CC = "gcc"
CFLAGS = "-O2 -Wall -Wextra -Iinclude"  # as the example's [vars]
CHANGED = "src/lib/roman.c"
ANCHOR = "int from_roman(const char *s) {"


class BenchError(Exception):
    pass


@dataclass
class Tool:
    label: str
    cwd: Path
    argv: list[str]
    env: dict[str, str]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def run(self, phase: str) -> float:
        start = time.perf_counter()
        proc = subprocess.run(self.argv, cwd=self.cwd, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"{self.label} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        self.samples.setdefault(phase, []).append(seconds)
        return seconds

    def best(self, phase: str) -> float:
        return min(self.samples[phase])


def makefile(root: Path) -> str:
    """The example's recipe as a Makefile: the same steps, flags and outputs."""
    lib = sorted(p.relative_to(root).as_posix() for p in (root / "src/lib").glob("*.c"))
    objs = " ".join(f"build/{p[len('src/'):-2]}.o" for p in lib)
    return f"""\
CC = {CC}
CFLAGS = {CFLAGS}

all: build/app build/test-report.txt

build/%.o: src/%.c
\t@mkdir -p $(@D)
\t$(CC) $(CFLAGS) -MD -MF build/$*.d -c $< -o $@

build/tests/%.o: tests/%.c
\t@mkdir -p $(@D)
\t$(CC) $(CFLAGS) -MD -MF build/tests/$*.d -c $< -o $@

build/libkit.a: {objs}
\tar rcsD $@ $^

build/app: build/main.o build/libkit.a
\t$(CC) $^ -lm -o $@

build/test_lib: build/tests/test_lib.o build/libkit.a
\t$(CC) $^ -lm -o $@

build/test-report.txt: build/test_lib
\t./build/test_lib > $@ || {{ cat $@; exit 1; }}

-include $(wildcard build/*.d build/lib/*.d build/tests/*.d)
"""


def copy_project(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", ".majordomo"))
    return dest


def wipe(root: Path) -> None:
    for name in ("build", ".majordomo"):
        shutil.rmtree(root / name, ignore_errors=True)


def wipe_keeping_federation(root: Path) -> None:
    """`make clean` with the resident federation up: outputs and the build state go (every step
    runs again), the running nats-server and chefs stay, as after a first build of the day."""
    shutil.rmtree(root / "build", ignore_errors=True)
    for state in (root / ".majordomo").glob("state.db*"):
        state.unlink()
    (root / ".majordomo" / "noop.stamp").unlink(missing_ok=True)


def same_results(tools: list[Tool]) -> None:
    reports = {t.label: (t.cwd / "build/test-report.txt").read_text() for t in tools}
    outputs = {t.label: subprocess.run([str(t.cwd / "build/app")], capture_output=True, text=True, check=True).stdout
               for t in tools}
    if len(set(reports.values())) != 1 or len(set(outputs.values())) != 1:
        raise BenchError(f"the builds differ: reports {reports}, program outputs {outputs}")
    if not next(iter(reports.values())).startswith("ok:"):
        raise BenchError(f"the tests failed: {reports}")


def run(base: Path, rounds: int) -> tuple[Tool, Tool, Tool]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAJORDOMO_NATS", "MAJORDOMO_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["XDG_CONFIG_HOME"] = str(base / "config")  # no user config naming a NATS server: embedded federation
    ours_root = copy_project(base / "majordomo")
    make_root = copy_project(base / "make")
    (make_root / "Makefile").write_text(makefile(make_root))
    floor_root = base / "floor"
    floor_root.mkdir()
    (floor_root / "majordomo.toml").write_text('[[step]]\nname = "copy"\ninputs = ["in"]\noutputs = ["out"]\n'
                                               'command = "cp $< $@"\n')
    (floor_root / "in").write_text("warm-up\n")
    ours = Tool("majordomo build", ours_root, [sys.executable, "-m", "majordomo.cli", "build", "-q"], env)
    peer = Tool("make -j2", make_root, ["make", "-j2"], dict(os.environ))
    floor = Tool("floor", floor_root, ours.argv, env)
    floor.run("warm-up")  # state database and tool identities exist from here on
    compiles = len(list((ours_root / "src").rglob("*.c"))) + 1

    print(f"1. first: clean build starting the federation ({compiles} compiles, archive, 2 links, test run),"
          f" {rounds} round(s)")
    for _ in range(rounds):
        for tool in (ours, peer):
            wipe(tool.cwd)
            print(f"   {tool.label:<24} {tool.run('first'):7.3f} s")
        (floor_root / "in").write_text(f"{time.perf_counter()}\n")  # interleaved, so load drift hits it alike
        print(f"   {floor.label:<24} {floor.run('floor'):7.3f} s")
    same_results([ours, peer])

    print(f"1b. clean: the same clean build with the federation up (resident), {rounds} round(s)")
    for _ in range(rounds):
        for tool in (ours, peer):
            (wipe_keeping_federation if tool is ours else wipe)(tool.cwd)
            print(f"   {tool.label:<24} {tool.run('clean'):7.3f} s")
    same_results([ours, peer])

    print(f"2. {CHANGED} changed (a new function each round), {rounds} round(s)")
    for r in range(rounds):
        for tool in (ours, peer):
            source = tool.cwd / CHANGED
            text = (EXAMPLE / CHANGED).read_text()
            if ANCHOR not in text:
                raise BenchError(f"{CHANGED} no longer has {ANCHOR!r}, which this bench edits")
            source.write_text(text.replace(ANCHOR, f"int roman_bench_{r}(void) {{ return {r}; }}\n\n{ANCHOR}"))
            print(f"   {tool.label:<24} {tool.run('changed'):7.3f} s")
    same_results([ours, peer])
    return ours, peer, floor

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per phase; the best wall time counts")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for tool in (CC, "make", "ar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.cproject: {tool} is not installed (bash deploy/setup-debian.sh)")
    base = Path(tempfile.mkdtemp(prefix="bench-cproject-"))
    try:
        ours, peer, floor = run(base, args.rounds)
    except BenchError as exc:
        raise SystemExit(f"bench.cproject: {exc}") from None
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratio = {phase: ours.best(phase) / peer.best(phase) for phase in ("clean", "first", "changed")}
    clean_ok = ratio["clean"] <= CLEAN_TARGET
    notes = {"clean": ("<=" + format(CLEAN_TARGET, "g") + "x",
                       f"{'PASS' if clean_ok else 'MISS'} (federation up, state and outputs wiped)"),
             "first": ("-", "info: the same build starting the federation (once per session)"),
             "changed": ("-", "info")}
    print(f"\n{'phase':<9} {'majordomo s':>11} {'make -j2 s':>10} {'ratio':>7} {'target':>8}  result")
    for phase, (target, note) in notes.items():
        print(f"{phase:<9} {ours.best(phase):>11.3f} {peer.best(phase):>10.3f} {ratio[phase]:>6.2f}x"
              f" {target:>8}  {note}")
    print(f"{'floor':<9} {floor.best('floor'):>11.3f} {'':>10} {'':>7} {'-':>8}  info: majordomo running one `cp` step")
    raise SystemExit(0 if clean_ok else 1)


if __name__ == "__main__":
    main()
