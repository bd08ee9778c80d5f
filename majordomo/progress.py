"""How a build reports itself to a person.

`make_reporter` picks one: on a terminal, a live status area redrawn in place
(`progress_tty.TtyReporter`); anywhere else (CI logs, pipes, `--json`'s stderr), plain lines, one
per finished step, with no control codes at all. Both print the same finished-step lines.
"""

from __future__ import annotations

import os
from typing import Protocol, TextIO

from majordomo.engine import BuildReport, StepOutcome

LOG_TAIL_LINES = 30


class Reporter(Protocol):
    """What `majordomo build` and `watch` drive; every method is called on the event loop's thread."""

    def step(self, outcome: StepOutcome, done: int, total: int) -> None: ...

    def event(self, kind: str, step_id: str, chef_id: str, detail: dict[str, object]) -> None: ...

    def summary(self, report: BuildReport) -> None: ...

    def close(self) -> None: ...


def outcome_lines(outcome: StepOutcome, done: int, total: int, *, quiet: bool, verbose: bool) -> list[str]:
    """The lines a finished step prints: `[i/n] ran X on chef (0.12s)`, failures with their log tail;
    with `verbose` also cached steps and the command of each step that ran."""
    width = len(str(total))
    prefix = f"[{done:>{width}}/{total}]"
    step = outcome.step
    if outcome.state == "cached":
        return [f"{prefix} cached  {step.id}"] if verbose else []
    if outcome.state == "run":
        if quiet:
            return []
        return [f"{prefix} ran     {step.id} on {outcome.chef} ({outcome.duration_s:.2f}s)",
                *(_command_lines(step.command) if verbose else [])]
    if outcome.state == "skipped":
        return [] if quiet else [f"{prefix} skipped {step.id}: {outcome.message}"]
    lines = [f"{prefix} FAILED  {step.id}: {outcome.message}"]
    if verbose and outcome.chef:  # it did run on a chef: show what was run
        lines += _command_lines(step.command)
    if outcome.log.strip():
        lines += [f"    | {line}" for line in outcome.log.rstrip().splitlines()[-LOG_TAIL_LINES:]]
    return lines


def _command_lines(command: str) -> list[str]:
    return [f"    $ {line}" for line in command.strip().splitlines()]


def summary_lines(report: BuildReport) -> list[str]:
    lines = [f"removed {path}: no longer a final output" for path in report.removed]
    verdict = "ok" if report.ok else "FAILED"
    parts = [f"{report.steps_run} run", f"{report.steps_cached} cached", f"{report.steps_failed} failed"]
    if report.steps_skipped:
        parts.append(f"{report.steps_skipped} skipped")
    pulled = f", {report.files_pulled} files / {report.bytes_pulled} bytes pulled" if report.files_pulled else ""
    if report.files_local:
        pulled += f", {report.files_local} files / {report.bytes_local} bytes taken on this host"
    lines.append(f"build {verdict}: {', '.join(parts)} in {report.duration_s:.2f}s{pulled}")
    return lines


class LineReporter:
    """Plain lines, no control codes: right for pipes and CI logs (and terminals that want them)."""

    def __init__(self, out: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.verbose = verbose

    def step(self, outcome: StepOutcome, done: int, total: int) -> None:
        lines = outcome_lines(outcome, done, total, quiet=self.quiet, verbose=self.verbose)
        if lines:
            self.out.write("".join(f"{line}\n" for line in lines))
            self.out.flush()

    def event(self, kind: str, step_id: str, chef_id: str, detail: dict[str, object]) -> None:
        """Build events (step placed, ...): plain lines do not show them."""

    def close(self) -> None:
        """Nothing on screen to clean up."""

    def summary(self, report: BuildReport) -> None:
        self.out.write("".join(f"{line}\n" for line in summary_lines(report)))
        self.out.flush()


def is_live_terminal(out: TextIO) -> bool:
    """A terminal that understands cursor movement: a TTY, and TERM set and not `dumb`."""
    if hasattr(out, "forwarded_size"):  # the resident build server's stream: the client checked TERM
        return out.isatty()
    if os.environ.get("TERM", "dumb") in ("", "dumb"):
        return False
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def make_reporter(out: TextIO, *, quiet: bool = False, verbose: bool = False, live: bool = True) -> Reporter:
    """The live status area when `out` is a capable terminal (and `live`, and not `quiet`: quiet
    means only failures and the summary); plain lines otherwise."""
    if live and not quiet and is_live_terminal(out):
        from majordomo.progress_tty import TtyReporter

        return TtyReporter(out, verbose=verbose)
    return LineReporter(out, quiet=quiet, verbose=verbose)
