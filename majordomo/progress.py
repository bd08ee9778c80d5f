"""How a build reports itself to a person: one line per step, failures with their log tail."""

from __future__ import annotations

from typing import TextIO

from majordomo.engine import BuildReport, StepOutcome

LOG_TAIL_LINES = 30


class LineReporter:
    """Plain lines, no control codes: right for terminals, pipes and CI logs alike."""

    def __init__(self, out: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.verbose = verbose

    def step(self, outcome: StepOutcome, done: int, total: int) -> None:
        width = len(str(total))
        prefix = f"[{done:>{width}}/{total}]"
        if outcome.state == "cached":
            if self.verbose:
                print(f"{prefix} cached  {outcome.step.id}", file=self.out, flush=True)
            return
        if outcome.state == "run":
            if not self.quiet:
                print(f"{prefix} ran     {outcome.step.id} on {outcome.chef} ({outcome.duration_s:.2f}s)",
                      file=self.out, flush=True)
            return
        if outcome.state == "skipped":
            if not self.quiet:
                print(f"{prefix} skipped {outcome.step.id}: {outcome.message}", file=self.out, flush=True)
            return
        print(f"{prefix} FAILED  {outcome.step.id}: {outcome.message}", file=self.out, flush=True)
        if outcome.log.strip():
            lines = outcome.log.rstrip().splitlines()[-LOG_TAIL_LINES:]
            for line in lines:
                print(f"    | {line}", file=self.out)
            self.out.flush()

    def event(self, kind: str, step_id: str, chef_id: str, detail: dict[str, object]) -> None:
        """Build events (step placed, ...): plain lines do not show them."""

    def close(self) -> None:
        """Nothing on screen to clean up."""

    def summary(self, report: BuildReport) -> None:
        for path in report.removed:
            print(f"removed {path}: no longer a final output", file=self.out)
        verdict = "ok" if report.ok else "FAILED"
        parts = [f"{report.steps_run} run", f"{report.steps_cached} cached", f"{report.steps_failed} failed"]
        if report.steps_skipped:
            parts.append(f"{report.steps_skipped} skipped")
        pulled = f", {report.files_pulled} files / {report.bytes_pulled} bytes pulled" if report.files_pulled else ""
        print(f"build {verdict}: {', '.join(parts)} in {report.duration_s:.2f}s{pulled}", file=self.out, flush=True)


def make_reporter(out: TextIO, *, quiet: bool = False, verbose: bool = False, live: bool = True) -> LineReporter:
    """The reporter for `out`: plain lines for now."""
    return LineReporter(out, quiet=quiet, verbose=verbose)
