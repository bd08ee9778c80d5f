"""examples/paper built by majordomo against latexmk, measured in one run.

    python -m bench.latex [--rounds R]

Two copies of examples/paper in a temp dir. majordomo builds one (embedded federation: its own
nats-server and chefs, bwrap sandboxes) with this checkout's code and an empty user config;
`latexmk -pdf` builds the other with the same pdflatex flags and environment. The peer's results
table is made by the same Python script, timed with latexmk on the clean build (a Makefile would
rerun it only when the data changes, as majordomo does).

Phases (best wall time of R rounds; each round starts from scratch or makes a new edit):
1. "first": a clean build with nothing running, so majordomo starts its embedded federation (the
   first build of a project, or the first after 10 idle minutes);
1b. "clean": a clean build with the resident federation up (outputs and build state wiped;
   nats-server, chefs and the build server kept): `latexmk -C && latexmk` during a session;
2. "edit": one paragraph edited (a new word each round, so neither tool can reuse a result).

LaTeX passes are pdflatex runs: majordomo's `ran     latex` progress lines, latexmk's
"Run number N of rule 'pdflatex'" lines. Targets: passes <= latexmk's in every phase; wall <= 1.2x
latexmk's for "clean" and "edit". The "first" wall ratio is printed for information: the
federation's start is paid once per session, as a Bazel server's or a Gradle daemon's is, and is
measured apart (docs/architecture.md, "What the clean-build targets measure").
Both PDFs must have the same text, with no unresolved "??".

For reading the wall ratio, two informational figures: "steps" is the sum of the step durations
the chefs report (the work itself, sandbox included), and "floor" is a majordomo build that
reruns the one step of a tiny project (`cp`, its input changed each round): what any build that
runs a step pays to start the CLI and the embedded federation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.cproject import wipe_keeping_federation

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "paper"
WALL_TARGET = 1.2
LATEX_FLAGS = ["-interaction=nonstopmode", "-halt-on-error", "-file-line-error"]
TEX_ENV = {"SOURCE_DATE_EPOCH": "1700000000", "FORCE_SOURCE_DATE": "1"}  # as the example's recipe
EDITED = "sections/method.tex"
PARAGRAPH = "The\nreadings are illustrative, not a laboratory record."
_OUR_LATEX = re.compile(r"^\[\s*\d+/\d+\] ran\s+latex on ", re.M)
_OUR_BIBTEX = re.compile(r"^\[\s*\d+/\d+\] ran\s+bibtex on ", re.M)
_LATEXMK_LATEX = re.compile(r"^Run number \d+ of rule 'pdflatex'", re.M)
_LATEXMK_BIBTEX = re.compile(r"^Run number \d+ of rule 'bibtex", re.M)
_STEP_SECONDS = re.compile(r"^\[\s*\d+/\d+\] ran\s+\S+ on \S+ \((\d+\.\d+)s\)", re.M)


class BenchError(Exception):
    pass


@dataclass
class Sample:
    seconds: float
    latex: int
    bibtex: int
    step_seconds: float = 0.0  # majordomo only: the chefs' reported step durations, summed


@dataclass
class Tool:
    label: str
    cwd: Path
    command: Callable[[int], list[list[str]]]  # round -> the commands one build runs, in order
    env: dict[str, str]
    latex_re: re.Pattern[str]
    bibtex_re: re.Pattern[str]
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def run(self, phase: str, round_: int) -> Sample:
        output = ""
        start = time.perf_counter()
        for argv in self.command(round_):
            proc = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True)
            output += proc.stdout + proc.stderr
            if proc.returncode != 0:
                raise BenchError(f"{self.label}: {' '.join(argv)} exited {proc.returncode}:\n{output[-3000:]}")
        sample = Sample(time.perf_counter() - start, len(self.latex_re.findall(output)),
                        len(self.bibtex_re.findall(output)), sum(map(float, _STEP_SECONDS.findall(output))))
        self.samples.setdefault(phase, []).append(sample)
        return sample


def copy_paper(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", ".majordomo"))
    return dest


def majordomo_tool(root: Path, config_home: Path) -> Tool:
    env = {k: v for k, v in os.environ.items() if k not in ("MAJORDOMO_NATS", "MAJORDOMO_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["XDG_CONFIG_HOME"] = str(config_home)  # no user config naming a NATS server: embedded federation
    argv = [sys.executable, "-m", "majordomo.cli", "build", "-C", str(root)]
    return Tool("majordomo build", root, lambda _r: [argv], env, _OUR_LATEX, _OUR_BIBTEX)


def latexmk_tool(root: Path) -> Tool:
    env = {**os.environ, **TEX_ENV}
    table = ["sh", "-c", "mkdir -p build && python3 tools/fit_cooling.py data/cooling.csv > build/cooling-table.tex"]
    latexmk = ["latexmk", "-pdf", "-output-directory=build", *LATEX_FLAGS, "paper.tex"]
    tool = Tool("latexmk -pdf", root, lambda _r: [table, latexmk], env, _LATEXMK_LATEX, _LATEXMK_BIBTEX)
    return tool


def pdf_text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(out.split())


def check_same_pdf_text(tools: Sequence[Tool], expect: str | None = None) -> None:
    texts = {t.label: pdf_text(t.cwd / "build" / "paper.pdf") for t in tools}
    first = next(iter(texts.values()))
    for label, text in texts.items():
        if "??" in text or "[?]" in text:
            raise BenchError(f"{label}: unresolved references in the PDF")
        if text != first:
            raise BenchError(f"the PDFs' texts differ: {', '.join(texts)}")
        if expect and expect not in text:
            raise BenchError(f"{label}: the edit ({expect!r}) is not in the PDF")


def run(base: Path, rounds: int) -> list[Row]:
    ours = majordomo_tool(copy_paper(base / "majordomo"), base / "config")
    peer = latexmk_tool(copy_paper(base / "latexmk"))
    tools = [ours, peer]

    def wipe(tool: Tool) -> None:
        for name in ("build", ".majordomo"):
            shutil.rmtree(tool.cwd / name, ignore_errors=True)

    floor_root = base / "floor"
    floor_root.mkdir()
    (floor_root / "majordomo.toml").write_text('[[step]]\nname = "copy"\ninputs = ["in"]\noutputs = ["out"]\n'
                                               'command = "cp $< $@"\n')
    (floor_root / "in").write_text("warm-up\n")
    floor = majordomo_tool(floor_root, base / "config")
    floor.label = "floor"
    floor.run("warm-up", 0)  # state database and tool identities exist from here on, as in the edit phase

    def run_floor(r: int) -> None:  # interleaved with the others, so load drift hits it alike
        (floor_root / "in").write_text(f"round {r}, {time.perf_counter()}\n")
        floor.run("floor", r)

    print(f"1. first: clean build starting the federation, {rounds} round(s)")
    for r in range(rounds):
        for tool in tools:
            wipe(tool)
            s = tool.run("first", r)
            print(f"   {tool.label:<16} {s.seconds:7.3f} s  latex {s.latex}  bibtex {s.bibtex}")
        run_floor(r)
    check_same_pdf_text(tools)

    print(f"1b. clean: the same clean build with the federation up (resident), {rounds} round(s)")
    for r in range(rounds):
        for tool in tools:
            if tool is ours:
                wipe_keeping_federation(tool.cwd)
            else:
                wipe(tool)
            s = tool.run("clean", r)
            print(f"   {tool.label:<16} {s.seconds:7.3f} s  latex {s.latex}  bibtex {s.bibtex}")
    check_same_pdf_text(tools)

    print(f"2. one paragraph of {EDITED} edited, {rounds} round(s)")
    peer.command = lambda _r: [["latexmk", "-pdf", "-output-directory=build", *LATEX_FLAGS, "paper.tex"]]
    for r in range(rounds):
        # A different length each round: latexmk trusts an unchanged size and (whole-second) mtime.
        word = "a " + "very " * r + "old thermometer"
        for tool in tools:
            source = tool.cwd / EDITED
            text = (EXAMPLE / EDITED).read_text()
            if PARAGRAPH not in text:
                raise BenchError(f"{EDITED} no longer has the paragraph this bench edits: {PARAGRAPH!r}")
            source.write_text(text.replace(PARAGRAPH, f"The\nreadings were taken with {word}."))
            s = tool.run("edit", r)
            print(f"   {tool.label:<16} {s.seconds:7.3f} s  latex {s.latex}  bibtex {s.bibtex}")
        run_floor(r)
        check_same_pdf_text(tools, f"taken with {word}")
    rows = [Row(phase, ours, peer) for phase in ("first", "clean", "edit")]
    for row in rows:
        row.floor = min(s.seconds for s in floor.samples["floor"])
    return rows


WALL_INFO_ONLY = {"first"}  # the federation's start: measured, not held to the wall target


@dataclass
class Row:
    phase: str
    ours: Tool
    peer: Tool
    floor: float = 0.0

    def best(self, tool: Tool) -> Sample:
        return min(tool.samples[self.phase], key=lambda s: s.seconds)

    def passes(self, tool: Tool) -> int:
        """Conservative: majordomo's worst round against latexmk's best (latexmk, trusting whole-second
        mtimes, sometimes makes an extra pass)."""
        counts = [s.latex for s in tool.samples[self.phase]]
        return max(counts) if tool is self.ours else min(counts)

    @property
    def ratio(self) -> float:
        return self.best(self.ours).seconds / self.best(self.peer).seconds

    @property
    def passes_ok(self) -> bool:
        return self.passes(self.ours) <= self.passes(self.peer)

    @property
    def wall_ok(self) -> bool:
        return self.ratio <= WALL_TARGET or self.phase in WALL_INFO_ONLY

    @property
    def wall_verdict(self) -> str:
        if self.phase in WALL_INFO_ONLY:
            return "info"
        return "PASS" if self.wall_ok else "MISS"


def print_table(rows: Sequence[Row]) -> None:
    print(f"\n{'phase':<10} {'tool':<16} {'latex':>5} {'bibtex':>6} {'best s':>8} {'ratio':>7}   {'passes':<7}"
          f" {'wall<=' + format(WALL_TARGET, 'g') + 'x':<11} note")
    for row in rows:
        for tool in (row.ours, row.peer):
            best = row.best(tool)
            if tool is row.ours:
                verdicts = f"{'PASS' if row.passes_ok else 'MISS':<7} {row.wall_verdict:<11}"
                verdicts += f" steps {best.step_seconds:.3f} s, floor {row.floor:.3f} s"
                ratio = f"{row.ratio:6.2f}x"
            else:
                verdicts, ratio = "", "  1.00x"
            print(f"{row.phase:<10} {tool.label:<16} {row.passes(tool):>5} {best.bibtex:>6}"
                  f" {best.seconds:>8.3f} {ratio:>7}   {verdicts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per phase; the best wall time counts")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for tool in ("pdflatex", "bibtex", "latexmk", "pdftotext"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.latex: {tool} is not installed (bash deploy/setup-debian.sh)")
    base = Path(tempfile.mkdtemp(prefix="bench-latex-"))
    try:
        rows = run(base, args.rounds)
    except BenchError as exc:
        raise SystemExit(f"bench.latex: {exc}") from None
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(rows)
    raise SystemExit(0 if all(r.passes_ok and r.wall_ok for r in rows) else 1)


if __name__ == "__main__":
    main()
