"""Progress output: a live status area on a real pseudo-terminal, plain lines through pipes.

The end-to-end tests run `majordomo build` / `watch` (embedded federation, real chefs) with stdout
and stderr on a pty, read everything it writes until it exits, and replay it on a small terminal
model (`Screen`), which fails on any control sequence it does not know. No sleeps: reads block on
the pty with a deadline.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, majordomo, write_project

from majordomo.engine import BuildReport, StepOutcome
from majordomo.progress import LineReporter, make_reporter
from majordomo.progress_tty import HIDE_CURSOR, SHOW_CURSOR, TtyReporter, printable
from majordomo.recipes import Step

COLS, ROWS = 100, 30
HEADER = re.compile(r"^\[[#.]{24}\] \d+/(\d+|\?) steps")
PLAIN = re.compile(r"^(\[\s*\d+/\d+\] (ran     \S+ on \S+ \(\d+\.\d\ds\)|cached  \S+|skipped \S+: .*|FAILED  \S+: .*)"
                   r"|    [|$] .*|build (ok|FAILED): .*)$")

SLOW = """
[[rule]]
name = "slow"
inputs = ["src/%.txt"]
outputs = ["build/%.up"]
command = "sleep 1.5; tr a-z A-Z < $< > $@"

[[step]]
name = "join"
inputs = ["build/*.up"]
outputs = ["build/all.txt"]
command = "cat $^ > $@"
"""
SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n", "src/c.txt": "gamma\n"}

MIXED = """
[[step]]
name = "fine"
inputs = ["src/a.txt"]
outputs = ["build/a.up"]
command = "tr a-z A-Z < $< > $@"

[[step]]
name = "broken"
inputs = ["src/b.txt"]
outputs = ["build/b.up"]
command = "echo 'first complaint'; echo 'last complaint' >&2; exit 3"
"""


# -- a terminal model -----------------------------------------------------------------------------


class Screen:
    """Just enough of a VT100 to replay what majordomo writes: text with autowrap, CR, LF (scrolling
    into `history`), cursor up, erase below / to end of line, cursor shown/hidden, colours ignored.
    Anything else is a test failure: the reporter must not emit sequences we did not mean."""

    _TOKEN = re.compile(r"\x1b\[([?0-9;]*)([@-~])|\x1b(.)|([\r\n\t\b])|([^\x1b\r\n\t\b]+)", re.S)

    def __init__(self, cols: int = COLS, rows: int = ROWS) -> None:
        self.cols, self.rows = cols, rows
        self.grid = [[" "] * cols for _ in range(rows)]
        self.history: list[str] = []
        self.x = self.y = 0
        self.wrap_pending = False
        self.cursor_visible = True
        self._partial = ""

    def feed(self, text: str) -> None:
        text = self._partial + text
        self._partial = ""
        pos = 0
        while pos < len(text):
            if text[pos] == "\x1b" and not re.match(r"\x1b(\[[?0-9;]*[@-~]|[^\[])", text[pos:], re.S):
                self._partial = text[pos:]  # a sequence split across reads: wait for the rest
                return
            m = self._TOKEN.match(text, pos)
            assert m, text[pos:pos + 20]
            pos = m.end()
            params, final, esc, ctl, chars = m.groups()
            if chars:
                for ch in chars:
                    self._put(ch)
            elif ctl == "\r":
                self.x, self.wrap_pending = 0, False
            elif ctl == "\n":
                self._linefeed()
            elif ctl == "\t":
                self.x = min(self.cols - 1, (self.x // 8 + 1) * 8)
            elif ctl == "\b":
                self.x = max(0, self.x - 1)
            elif esc is not None:
                raise AssertionError(f"unexpected escape ESC {esc!r}")
            else:
                self._csi(params, final)

    def _put(self, ch: str) -> None:
        if self.wrap_pending:
            self.x, self.wrap_pending = 0, False
            self._linefeed()
        self.grid[self.y][self.x] = ch
        if self.x == self.cols - 1:
            self.wrap_pending = True
        else:
            self.x += 1

    def _linefeed(self) -> None:
        self.wrap_pending = False
        if self.y == self.rows - 1:
            self.history.append("".join(self.grid.pop(0)).rstrip())
            self.grid.append([" "] * self.cols)
        else:
            self.y += 1

    def _csi(self, params: str, final: str) -> None:
        if params in ("?25",) and final in "hl":
            self.cursor_visible = final == "h"
        elif final == "A" and params.isdigit():
            self.y = max(0, self.y - int(params))
            self.wrap_pending = False
        elif final == "J" and params in ("", "0"):
            self.grid[self.y][self.x:] = [" "] * (self.cols - self.x)
            for row in self.grid[self.y + 1:]:
                row[:] = [" "] * self.cols
        elif final == "K" and params in ("", "0"):
            self.grid[self.y][self.x:] = [" "] * (self.cols - self.x)
        elif final == "m":
            pass
        else:
            raise AssertionError(f"unexpected control sequence ESC[{params}{final}")

    def lines(self) -> list[str]:
        """What is on screen, without trailing blank lines."""
        rows = ["".join(row).rstrip() for row in self.grid]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def transcript(self) -> list[str]:
        return self.history + self.lines()


def test_screen_model_replays_a_redraw() -> None:
    screen = Screen(20, 4)
    screen.feed("one\r\n" + HIDE_CURSOR + "area 1\r\nrun a\r\n\r\x1b[2A\x1b[J" + "two\r\narea 2" + SHOW_CURSOR)
    assert screen.lines() == ["one", "two", "area 2"] and screen.cursor_visible
    screen.feed("\r\n" * 3 + "x" * 25)  # scrolls, wraps
    assert screen.history == ["one", "two", "area 2"] and screen.lines()[-2:] == ["x" * 20, "x" * 5]
    with pytest.raises(AssertionError, match="unexpected control sequence"):
        screen.feed("\x1b[2J")


# -- running majordomo on a pseudo-terminal -------------------------------------------------------


@dataclass
class PtyRun:
    code: int
    raw: str
    screen: Screen
    snapshots: list[list[str]] = field(default_factory=list)  # the screen after each read
    wall_s: float = 0.0


def run_on_pty(project: Path, *args: str, term: str = "xterm", timeout: float = 120,
               act: Callable[[Screen, int], bool] | None = None) -> PtyRun:
    """`majordomo ARGS -C project` with stdin, stdout and stderr on a fresh pty (its controlling
    terminal, so ^C written to it interrupts like a keyboard). `act(screen, master_fd)` is called after
    every read until it returns True. Reads until the child closes the pty, then reaps it."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "TERM": term}
    env.pop("NO_COLOR", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "majordomo.cli", *args, "-C", str(project)],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the pty becomes its controlling terminal
    )
    os.close(slave)
    screen, raw, snapshots = Screen(), [], []
    decoder = codecs.getincrementaldecoder("utf-8")()
    deadline = started + timeout
    acting = act is not None
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no end within {timeout}s; screen: {screen.transcript()}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the pty is gone
                break
            if not chunk:
                break
            text = decoder.decode(chunk)
            raw.append(text)
            screen.feed(text)
            snapshots.append(screen.lines())
            if acting and act is not None and act(screen, master):
                acting = False
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return PtyRun(code, "".join(raw), screen, snapshots, time.monotonic() - started)


def _running_line(step_id: str) -> re.Pattern[str]:
    return re.compile(rf"^  {re.escape(step_id)}\s+ on local-\d+  \d+s$")


def test_terminal_build_shows_live_area_then_summary_with_slowest_steps(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", SLOW, SOURCES)
    run = run_on_pty(project, "build")
    assert run.code == 0, run.screen.transcript()

    # While the slow steps ran, the area showed progress and which chef ran each of them.
    live = [snap for snap in run.snapshots if any(HEADER.match(line) for line in snap)]
    assert live, "no status area was ever drawn"
    headers = [line for snap in live for line in snap if HEADER.match(line)]
    assert any(re.search(r" 0/4 steps  [1-3] running(  \d waiting)?  \d+s$", line) for line in headers), headers
    for line in headers:  # the bar is as full as the count says
        m = re.match(r"^\[(#*)\.*\] (\d)/4 ", line)
        assert m and len(m.group(1)) == 24 * int(m.group(2)) // 4, line
    running_seen = {step for step in ("slow[a]", "slow[b]", "slow[c]")
                    if any(_running_line(step).match(line) for snap in live for line in snap)}
    assert running_seen == {"slow[a]", "slow[b]", "slow[c]"}, live[-1]

    # Finished lines scrolled above it, as in plain output; at the end the area is gone.
    final = run.screen.transcript()
    assert not any(HEADER.match(line) or line.startswith("  slow[") for line in final), final
    ran = [line for line in final if " ran " in line]
    assert len(ran) == 4 and all(PLAIN.match(line) for line in ran), ran
    summary = final.index(next(line for line in final if line.startswith("build ok: 4 run, 0 cached, 0 failed in ")))
    assert final[summary + 1] == "slowest steps:"
    slowest = final[summary + 2:]
    assert len(slowest) == 4, final
    parsed = [re.match(r"^  (\d+\.\d\d)s  (\S+) on (local-\d+)$", line) for line in slowest]
    assert all(parsed), slowest
    durations = [float(m.group(1)) for m in parsed if m]
    assert durations == sorted(durations, reverse=True) and durations[0] >= 1.5
    assert {m.group(2) for m in parsed if m} == {"slow[a]", "slow[b]", "slow[c]", "join"}
    assert [m.group(2) for m in parsed if m][-1] == "join"

    # The terminal is left as it was found: cursor shown, and redraws were throttled.
    assert run.screen.cursor_visible and run.raw.rfind(SHOW_CURSOR) > run.raw.rfind(HIDE_CURSOR) >= 0
    assert run.raw.count("\x1b[J") <= 10 * run.wall_s + 5, (run.raw.count("\x1b[J"), run.wall_s)
    assert all(len(line) < COLS for snap in run.snapshots for line in snap)  # never wrapped


def test_pipes_get_plain_lines_without_control_codes(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", SLOW, SOURCES)
    env = {"TERM": "xterm"}  # a terminal type alone does not make a pipe a terminal
    first = majordomo(project, "build", env=env)
    assert first.code == 0, first.stderr
    assert "\x1b" not in first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert all(PLAIN.match(line) for line in lines), lines
    assert len([line for line in lines if " ran " in line]) == 4 and lines[-1].startswith("build ok: 4 run")

    # -v: cached steps too (it bypasses the no-op stamp), each on its own plain line.
    (project / "src/c.txt").write_text("gamma!\n")
    verbose = majordomo(project, "build", "-v", env=env)
    assert verbose.code == 0 and "\x1b" not in verbose.stdout + verbose.stderr
    lines = verbose.stdout.splitlines()
    assert all(PLAIN.match(line) for line in lines), lines
    assert sorted(re.sub(r"^\[\d/4\] ", "", line) for line in lines if " cached  " in line) == \
        ["cached  slow[a]", "cached  slow[b]"]
    ran_c = next(i for i, line in enumerate(lines) if " ran     slow[c] " in line)
    assert lines[ran_c + 1] == "    $ sleep 1.5; tr a-z A-Z < src/c.txt > build/c.up"

    # --json: human lines on stderr, plain, and the JSON summary last on stdout.
    (project / "src/a.txt").write_text("alpha!\n")
    as_json = majordomo(project, "build", "--json", env=env)
    assert as_json.code == 0 and "\x1b" not in as_json.stdout + as_json.stderr
    assert as_json.summary["steps_run"] == 2
    assert all(PLAIN.match(line) for line in as_json.stderr.splitlines()), as_json.stderr


def test_quiet_shows_only_failures_and_the_summary_on_a_terminal_and_a_pipe(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", MIXED, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    piped = majordomo(project, "build", "-q", env={"TERM": "xterm"})
    on_tty = run_on_pty(project, "build", "-q")
    for code, text in ((piped.code, piped.stdout + piped.stderr), (on_tty.code, on_tty.raw)):
        assert code == 1
        assert "\x1b" not in text  # quiet: no status area either
        lines = [line.rstrip("\r") for line in text.splitlines()]
        assert not any(" ran " in line or " cached  " in line for line in lines), lines
        failed = next(i for i, line in enumerate(lines) if "FAILED  broken:" in line)
        assert lines[failed + 1:failed + 3] == ["    | first complaint", "    | last complaint"], lines
        assert lines[-1].startswith("build FAILED: ") and "1 failed" in lines[-1]


def test_verbose_on_a_terminal_shows_cached_steps_commands_and_failure_logs(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", MIXED, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    assert majordomo(project, "build").code == 1  # `fine` is now cached, `broken` fails again below
    run = run_on_pty(project, "build", "-v")
    assert run.code == 1
    final = run.screen.transcript()
    assert HIDE_CURSOR in run.raw and run.screen.cursor_visible  # the live area was up
    assert any(re.match(r"^\[\d/2\] cached  fine$", line) for line in final), final
    failed = next(i for i, line in enumerate(final) if re.match(r"^\[\d/2\] FAILED  broken: ", line))
    assert final[failed + 1] == "    $ echo 'first complaint'; echo 'last complaint' >&2; exit 3"
    assert final[failed + 2:failed + 4] == ["    | first complaint", "    | last complaint"]
    assert any(line.startswith("build FAILED: 0 run, 1 cached, 1 failed") for line in final), final
    assert not any(HEADER.match(line) for line in final)


def test_json_and_dumb_terminals_get_plain_lines_even_on_a_tty(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", MIXED.replace("exit 3", "echo ok > $@"), {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    as_json = run_on_pty(project, "build", "--json")
    assert as_json.code == 0 and "\x1b" not in as_json.raw, as_json.raw
    assert '"steps_run": 2' in as_json.raw.splitlines()[-1]
    (project / "src/a.txt").write_text("A\n")
    dumb = run_on_pty(project, "build", term="dumb")
    assert dumb.code == 0 and "\x1b" not in dumb.raw
    assert [line for line in dumb.screen.lines() if line][-1].startswith("build ok: 1 run, 1 cached")


def test_ctrl_c_leaves_the_terminal_clean(tmp_path: Path) -> None:
    recipe = SLOW.replace("sleep 1.5", "sleep 5")  # long enough to be interrupted; the chefs let it finish
    project = write_project(tmp_path / "p", recipe, SOURCES)

    def interrupt_when_running(screen: Screen, master: int) -> bool:
        if any(_running_line("slow[a]").match(line) for line in screen.lines()):
            os.write(master, b"\x03")  # the terminal's ^C: SIGINT to its foreground process group
            return True
        return False

    run = run_on_pty(project, "build", act=interrupt_when_running, timeout=60)
    assert run.code == 130, run.screen.transcript()
    final = run.screen.lines()
    assert not any(HEADER.match(line) or line.startswith("  slow[") for line in final), final
    assert final[-1] == "majordomo: interrupted", final
    assert run.screen.cursor_visible and run.raw.rfind(SHOW_CURSOR) > run.raw.rfind(HIDE_CURSOR) >= 0


def test_watch_on_a_terminal_summarises_each_build_and_stops_clean(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", SLOW.replace("sleep 1.5; ", ""), SOURCES)
    builds = 0

    def edit_then_stop(screen: Screen, master: int) -> bool:
        nonlocal builds
        waiting = sum(line == "watching for changes (Ctrl-C stops)" for line in screen.transcript())
        if waiting > builds:
            builds = waiting
            if builds == 1:
                (project / "src/b.txt").write_text("bravo\n")
            else:
                os.write(master, b"\x03")
                return True
        return False

    run = run_on_pty(project, "watch", act=edit_then_stop, timeout=90)
    assert run.code == 0, run.screen.transcript()
    final = run.screen.transcript()
    assert HIDE_CURSOR in run.raw and run.screen.cursor_visible
    summaries = [i for i, line in enumerate(final) if line.startswith("build ok: ")]
    assert len(summaries) == 2, final
    assert final[summaries[0]].startswith("build ok: 4 run, 0 cached") and final[summaries[0] + 1] == "slowest steps:"
    assert final[summaries[1]].startswith("build ok: 2 run, 2 cached") and final[summaries[1] + 1] == "slowest steps:"
    slowest = [re.match(r"^  \d+\.\d\ds  (\S+) on local-\d$", line) for line in final[summaries[1] + 2:summaries[1] + 4]]
    assert sorted(m.group(1) for m in slowest if m) == ["join", "slow[b]"], final
    assert final[summaries[1] + 4].startswith("watching for changes (Ctrl-C stops)")  # maybe with the ^C echo
    assert not any(HEADER.match(line) for line in final)
    assert final[-1].endswith("majordomo: watch stopped"), final  # after the terminal's own ^C echo


# -- the reporters on their own -------------------------------------------------------------------


def _step(step_id: str, command: str = "true") -> Step:
    return Step(id=step_id, recipe=step_id.split("[")[0], kind="shell", command=command, inputs=(), outputs=(),
                env=(), tools=(), depfile="", recorder=False, normalise=(), max_passes=5, timeout_s=60.0,
                keep=False, origin="majordomo.toml:1")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_make_reporter_picks_live_output_only_for_capable_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(make_reporter(FakeTerminal()), TtyReporter)
    assert isinstance(make_reporter(io.StringIO()), LineReporter)  # a pipe, a file
    assert isinstance(make_reporter(FakeTerminal(), quiet=True), LineReporter)
    assert isinstance(make_reporter(FakeTerminal(), live=False), LineReporter)  # --json
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_reporter(FakeTerminal()), LineReporter)
    monkeypatch.delenv("TERM")
    assert isinstance(make_reporter(FakeTerminal()), LineReporter)


async def test_redraws_are_throttled_and_lines_kept_in_order() -> None:
    out, clock = FakeTerminal(), Clock()
    reporter = TtyReporter(out, clock=clock, screen_size=lambda: os.terminal_size((80, 24)))
    reporter.event("build.started", "", "", {"total": 200, "chefs": ["local-1"]})
    for n in range(1, 201):  # a burst within one redraw interval: one frame, the rest deferred
        reporter.event("step.placed", f"s[{n}]", "local-1", {"reason": "least loaded"})
        reporter.step(StepOutcome(_step(f"s[{n}]"), "run", chef="local-1", duration_s=n / 100), n, 200)
    assert out.getvalue().count(HIDE_CURSOR) == 1 and "\x1b[J" not in out.getvalue()
    clock.now += 0.1  # the next change after the interval draws, with every line held back
    reporter.event("build.finished", "", "", {"bytes_pulled": 0})
    text = out.getvalue()
    assert text.count("\x1b[J") == 1 and text.endswith(SHOW_CURSOR)
    ran = [line for line in text.split("\n") if " ran " in line]
    assert [int(re.search(r"s\[(\d+)\]", line).group(1)) for line in ran] == list(range(1, 201))  # type: ignore[union-attr]
    reporter.summary(BuildReport(steps_run=200, duration_s=2.5))
    tail = out.getvalue()[len(text):].splitlines()
    assert tail[:3] == ["build ok: 200 run, 0 cached, 0 failed in 2.50s", "slowest steps:", "  2.00s  s[200] on local-1"]
    assert len(tail) == 2 + 5


def test_area_fits_the_terminal_and_logs_cannot_move_the_cursor() -> None:
    out, clock = FakeTerminal(), Clock()
    reporter = TtyReporter(out, clock=clock, screen_size=lambda: os.terminal_size((40, 6)))
    for n in range(6):
        reporter.event("step.placed", f"a-rather-long-step-name[{n}]", f"chef-{n}", {})
    clock.now += 1
    log = "ok\n\x1b[2J\x1b[31mred\x1b[0m\rback\n\x1b]0;title\x07done"
    reporter.step(StepOutcome(_step("x"), "failed", chef="chef-0", message="exit 1", log=log), 1, 7)
    screen = Screen(40, 6)
    screen.feed(out.getvalue().replace("\n", "\r\n"))
    area = screen.lines()[-4:]
    assert all(len(line) < 40 for line in screen.transcript())
    assert HEADER.match(area[0]) and area[-1] == "  ... and 4 more", area  # 6 rows: 1 header, 2 steps, 1 more
    assert screen.transcript()[-9:-4] == ["[1/7] FAILED  x: exit 1", "    | ok", "    | red", "    | back", "    | done"]
    assert printable("a\x1b[1Ab\x07c\td") == "ab?c\td"
    reporter.close()
    reporter.close()  # idempotent: one cursor show
    assert out.getvalue().count(SHOW_CURSOR) == 1


def test_the_area_is_erased_when_the_loop_goes_away_under_it() -> None:
    """Ctrl-C or an error inside asyncio.run(): the ticker task's teardown cleans the terminal
    before anyone gets to print the error."""
    out = FakeTerminal()
    reporter = TtyReporter(out, screen_size=lambda: os.terminal_size((80, 24)))

    async def build_that_breaks() -> None:
        reporter.event("step.placed", "s", "local-1", {})
        await asyncio.sleep(0)
        raise RuntimeError("chef exploded")

    with pytest.raises(RuntimeError):
        asyncio.run(build_that_breaks())
    text = out.getvalue()
    assert HIDE_CURSOR in text and text.endswith("\r\x1b[2A\x1b[J" + SHOW_CURSOR)


def test_watch_without_events_counts_steps_and_starts_afresh_after_each_summary() -> None:
    out, clock = FakeTerminal(), Clock()
    reporter = TtyReporter(out, clock=clock, screen_size=lambda: os.terminal_size((80, 24)))
    for build in range(2):
        clock.now += 5  # between builds: not counted in the next build's elapsed time
        reporter.step(StepOutcome(_step("s"), "run", chef="local-1", duration_s=0.5), 1, 1)
        screen = Screen(80, 24)
        screen.feed(out.getvalue().replace("\n", "\r\n"))
        assert screen.lines()[-1] == "[########################] 1/1 steps  " + ("5s" if build == 0 else "0s")
        reporter.summary(BuildReport(steps_run=1, duration_s=0.5))
        assert out.getvalue().endswith("build ok: 1 run, 0 cached, 0 failed in 0.50s\nslowest steps:\n  0.50s  s on local-1\n")


def test_a_build_that_ended_without_summary_leaves_its_area_and_what_was_printed_under_it() -> None:
    """`watch` prints a build's error itself (no events reach the reporter): the next build must not
    erase that message as if it were the old area."""
    out, clock = FakeTerminal(), Clock()
    reporter = TtyReporter(out, clock=clock, screen_size=lambda: os.terminal_size((80, 24)))
    reporter.step(StepOutcome(_step("a"), "cached"), 1, 3)
    clock.now += 1
    reporter.step(StepOutcome(_step("b"), "cached"), 2, 3)
    out.write("majordomo: federation unreachable\nwatching for changes (Ctrl-C stops)\n")
    mark = len(out.getvalue())
    clock.now += 1
    reporter.step(StepOutcome(_step("a"), "run", chef="local-1", duration_s=0.25), 1, 3)
    assert "\x1b[J" not in out.getvalue()[mark:]
    screen = Screen(80, 24)
    screen.feed(out.getvalue().replace("\n", "\r\n"))
    assert screen.lines() == [
        "[################........] 2/3 steps  1s",
        "majordomo: federation unreachable",
        "watching for changes (Ctrl-C stops)",
        "[1/3] ran     a on local-1 (0.25s)",
        "[########................] 1/3 steps  0s",
    ]
    reporter.close()
    assert out.getvalue().endswith("\r\x1b[1A\x1b[J" + SHOW_CURSOR)


def test_at_exit_the_cursor_comes_back_without_erasing_what_others_wrote() -> None:
    out = FakeTerminal()
    reporter = TtyReporter(out, screen_size=lambda: os.terminal_size((80, 24)))
    reporter.step(StepOutcome(_step("a"), "cached"), 1, 2)
    out.write("majordomo: interrupted\n")
    mark = len(out.getvalue())
    reporter._at_exit()  # what atexit runs if nothing closed the area
    assert out.getvalue()[mark:] == SHOW_CURSOR
    reporter.close()
    assert out.getvalue()[mark:] == SHOW_CURSOR  # closed once
