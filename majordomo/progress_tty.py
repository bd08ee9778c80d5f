"""The live status area of `majordomo build` and `watch` on a terminal.

Finished-step lines (the same as the plain reporter's) scroll above a small area that is redrawn
in place: steps done / total with a bar, the steps running now and on which chef, bytes pulled
when known, and the elapsed time. At the end the area is erased and a summary with the slowest
steps is printed.

The area ends with a newline, so the cursor waits at the start of the line below it: anything
someone else prints meanwhile starts on a line of its own. Without the engine's events (`watch`
hands over step outcomes only) the area shows the count, the bar and the time, is redrawn only when
a step finishes, and a build that ended without a summary (an error the caller printed) leaves its
area in the scrollback rather than erasing lines that are no longer ours.

Everything runs on the event loop's thread and never waits: state changes only mark the area
dirty; it is redrawn at most every `MIN_REDRAW_S` (a timer on the loop catches up), each time with
one small write of the erase, the new scrolled lines and the area. The cursor is hidden while the
area is up. The area is erased and the cursor shown again when the build finishes, and when the
event loop goes away under it (Ctrl-C, an error: the ticker task's `finally`); at exit at the
latest, the cursor is shown.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import time
from collections.abc import Callable
from typing import TextIO

from majordomo.engine import BuildReport, StepOutcome
from majordomo.progress import outcome_lines, summary_lines

MIN_REDRAW_S = 0.1  # at most ~10 redraws a second
TICK_S = 1.0  # the elapsed times move on even when no event arrives
MAX_RUNNING_SHOWN = 8
SLOWEST_SHOWN = 5
BAR_WIDTH = 24

HIDE_CURSOR, SHOW_CURSOR, ERASE_DOWN = "\x1b[?25l", "\x1b[?25h", "\x1b[J"
# What a step's log may contain that would move our cursor or change the terminal's state.
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def printable(line: str) -> str:
    """`line` without escape sequences or control characters (tabs stay)."""
    return _CONTROLS.sub("?", _ESCAPES.sub("", line))


def duration(seconds: float) -> str:
    """`7s`, `2m05s`, `1h02m`: whole seconds, for an area redrawn every second."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def size(n: int) -> str:
    """`512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`."""
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


class TtyReporter:
    """Live progress on a terminal; `out` must be one (see `progress.make_reporter`)."""

    def __init__(self, out: TextIO, *, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 screen_size: Callable[[], os.terminal_size] | None = None) -> None:
        self.out = out
        self.verbose = verbose
        self._clock = clock
        self._screen_size = screen_size or self._terminal_size
        self._started: float | None = clock()  # reset by each summary: the next build starts anew
        self._reset()
        self._pending: list[str] = []  # finished-step lines not yet written above the area
        self._drawn = 0  # lines of the area on screen; the cursor is at the start of the line below
        self._events_seen = False  # the engine's events reach us (`build`), so do the running steps
        self._active = False  # the area is up (cursor hidden) until close()
        self._last_draw = float("-inf")
        self._redraw: asyncio.TimerHandle | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._broken = False  # the terminal went away: say nothing more

    def _reset(self) -> None:
        self._done = 0
        self._total = 0
        self._running: dict[str, tuple[str, float]] = {}  # step id -> (chef, placed at)
        self._waiting: set[str] = set()  # queued for a slot, not yet placed
        self._placements_seen = False  # events arrive (build); `watch` only hands us outcomes
        self._bytes_pulled: int | None = None
        self._slowest: list[tuple[float, str, str]] = []  # (duration, step id, chef)
        self._finished = False  # build.finished seen: no area until the summary

    # -- what the build tells us ------------------------------------------------------------------

    def step(self, outcome: StepOutcome, done: int, total: int) -> None:
        if done <= self._done:  # a new build, and the last one never got to its summary
            self._abandon_area()
        step_id = outcome.step.id
        self._running.pop(step_id, None)
        self._waiting.discard(step_id)
        self._done, self._total = done, max(total, self._total)
        if outcome.state in ("run", "failed") and outcome.duration_s > 0:
            self._slowest.append((outcome.duration_s, step_id, outcome.chef))
            self._slowest.sort(key=lambda entry: -entry[0])
            del self._slowest[SLOWEST_SHOWN:]
        lines = outcome_lines(outcome, done, total, quiet=False, verbose=self.verbose)
        self._pending += [printable(line) for line in lines]
        self._changed()

    def event(self, kind: str, step_id: str, chef_id: str, detail: dict[str, object]) -> None:
        self._events_seen = True
        if kind == "step.queued":
            self._running.pop(step_id, None)  # a retry: back to waiting for a slot
            self._waiting.add(step_id)
        elif kind == "step.placed":
            self._placements_seen = True
            self._waiting.discard(step_id)
            if chef_id:
                self._running[step_id] = (chef_id, self._clock())
        elif kind in ("step.cached", "step.skipped", "step.failed"):
            self._running.pop(step_id, None)
            self._waiting.discard(step_id)
        elif kind == "chef.lease_lost":
            self._pending.append(printable(f"chef {chef_id} lost its lease ({detail.get('reason', 'silent')}); "
                                           "its steps go to other chefs"))
        elif kind == "build.started":
            total = detail.get("total")
            if isinstance(total, int):
                self._total = max(total, self._total)
        if isinstance(pulled := detail.get("bytes_pulled"), int) and pulled:
            self._bytes_pulled = pulled
        if kind == "build.finished":
            self.close()
            self._finished = True
            return
        self._changed()

    def summary(self, report: BuildReport) -> None:
        self.close()
        lines = summary_lines(report)
        if self._slowest:
            lines.append("slowest steps:")
            width = max(len(f"{d:.2f}") for d, _, _ in self._slowest)
            lines += [f"  {d:>{width}.2f}s  {step_id}" + (f" on {chef}" if chef else "")
                      for d, step_id, chef in self._slowest]
        self._write("".join(f"{printable(line)}\n" for line in lines))
        self._reset()
        self._started = None

    def close(self) -> None:
        """Write what is pending, erase the area and show the cursor; safe to call at any time."""
        if self._redraw is not None:
            self._redraw.cancel()
            self._redraw = None
        ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker is not _current_task():
            ticker.cancel()
        if not self._active:
            if self._pending:
                self._write(self._scrolled())
            return
        self._active = False
        atexit.unregister(self._at_exit)
        self._write(self._erase() + self._scrolled() + SHOW_CURSOR)
        self._drawn = 0

    # -- drawing ----------------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._broken:
            return
        if self._finished:  # a straggler after build.finished: plain lines, no area
            if self._pending:
                self._write(self._scrolled())
            return
        if not self._active:
            self._activate()
        wait = self._last_draw + MIN_REDRAW_S - self._clock()
        if wait <= 0:
            self._draw()
        elif self._redraw is None:
            with contextlib.suppress(RuntimeError):  # no loop (a direct call): the next change draws
                self._redraw = asyncio.get_running_loop().call_later(wait, self._draw)

    def _activate(self) -> None:
        self._active = True
        if self._started is None:
            self._started = self._clock()
        atexit.register(self._at_exit)  # the last resort; normally the build's end or the ticker's comes first
        with contextlib.suppress(RuntimeError):
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        try:
            while self._active:
                await asyncio.sleep(TICK_S)
                # Only while events flow: else an error printed under the area would be erased.
                if self._active and self._redraw is None and self._events_seen:
                    self._draw()
        finally:
            # Cancelled by close(), or by asyncio.run() tearing the loop down (Ctrl-C, an error):
            # either way the terminal is left clean before anyone prints the error.
            self.close()

    def _at_exit(self) -> None:
        """Neither the build's end nor the loop's teardown closed the area (a second Ctrl-C, say):
        someone may have written under it since, so it stays; the cursor is given back."""
        if self._active:
            self._active = False
            self._write(self._scrolled() + SHOW_CURSOR)

    def _draw(self) -> None:
        self._redraw = None
        if not self._active or self._broken:
            return
        self._last_draw = self._clock()
        lines = self._area()
        frame = self._erase() + self._scrolled() + ("" if self._drawn else HIDE_CURSOR) + "".join(
            f"{line}\n" for line in lines)
        self._drawn = len(lines)
        self._write(frame)

    def _erase(self) -> str:
        """Back up to the area's first line and clear to the end of the screen."""
        return f"\r\x1b[{self._drawn}A{ERASE_DOWN}" if self._drawn else ""

    def _abandon_area(self) -> None:
        """Leave what is on screen as it is (others wrote below it) and start a fresh area."""
        self._drawn = 0
        self._reset()
        self._started = self._clock()

    def _scrolled(self) -> str:
        text = "".join(f"{line}\n" for line in self._pending)
        self._pending.clear()
        return text

    def _area(self) -> list[str]:
        cols, rows = self._screen_size()
        width = max(20, cols - 1)  # never the last column: no pending wrap to confuse the count
        now = self._clock()
        total = self._total
        filled = BAR_WIDTH * self._done // total if total else 0
        head = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self._done}/{total or '?'} steps"]
        if self._placements_seen or self._running:
            head.append(f"{len(self._running)} running")
        if self._waiting:
            head.append(f"{len(self._waiting)} waiting")
        if self._bytes_pulled:
            head.append(f"{size(self._bytes_pulled)} pulled")
        head.append(duration(now - (self._started if self._started is not None else now)))
        lines = ["  ".join(head)]
        room = max(0, min(MAX_RUNNING_SHOWN, rows - 3))
        running = sorted(self._running.items(), key=lambda item: (item[1][1], item[0]))
        shown = running if len(running) <= room else running[:max(0, room - 1)]
        id_width = max((len(step_id) for step_id, _ in shown), default=0)
        for step_id, (chef, since) in shown:
            lines.append(f"  {step_id:<{id_width}}  on {chef}  {duration(now - since)}")
        if len(shown) < len(running):
            lines.append(f"  ... and {len(running) - len(shown)} more")
        return [printable(line)[:width] for line in lines]

    def _terminal_size(self) -> os.terminal_size:
        if forwarded := getattr(self.out, "forwarded_size", None):  # a client's terminal, via the build server
            return forwarded
        try:
            return os.get_terminal_size(self.out.fileno())
        except (AttributeError, OSError, ValueError):
            return os.terminal_size((80, 24))

    def _write(self, text: str) -> None:
        if not text or self._broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # the terminal is gone (hangup, closed): the build goes on
            self._broken = True


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
