"""`majordomo watch`: rebuilds on change with the federation kept up; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import REPO, write_project

RECIPE = """
[[rule]]
name = "upper"
inputs = ["src/%.txt"]
outputs = ["out/%.up"]
command = "tr a-z A-Z < $< > $@"
"""


class Watcher:
    def __init__(self, project: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "majordomo.cli", "watch", "-C", str(project), "--rescan", "60", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate, timeout: float = 20.0) -> list[str]:  # type: ignore[no-untyped-def]
        """Lines up to and including the first that satisfies `predicate` (each wait bounded)."""
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"watch said nothing expected within {timeout}s; it said: {seen}") from None
            seen.append(line)
            if predicate(line):
                return seen


def _chef_processes(project: Path) -> list[int]:
    marker = str(project / ".majordomo" / "chefs").encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_watch_rebuilds_on_change_and_stops_cleanly(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"})
    w = Watcher(project)
    try:
        first = w.until(lambda ln: ln.startswith("watching for changes"))
        assert any(ln.startswith("build ok: 2 run") for ln in first), first
        assert (project / "out/a.up").read_text() == "ALPHA\n"
        chefs = _chef_processes(project)
        assert len(chefs) == 2  # the embedded federation stays up between builds

        (project / "src/a.txt").write_text("again\n")
        second = w.until(lambda ln: ln.startswith("watching for changes"))
        assert any(ln.startswith("build ok: 1 run, 1 cached") for ln in second), second
        assert (project / "out/a.up").read_text() == "AGAIN\n"
        assert _chef_processes(project) == chefs  # same chefs: nothing restarted

        # A broken recipe mid-edit is reported, and the watch waits for the next save.
        (project / "majordomo.toml").write_text(RECIPE + "\n[[rule]\n")
        broken = w.until(lambda ln: ln.startswith("watching for changes"))
        assert any("majordomo.toml:" in ln for ln in broken), broken
        (project / "majordomo.toml").write_text(RECIPE)
        w.until(lambda ln: ln.startswith("watching for changes"))
    finally:
        w.proc.send_signal(signal.SIGINT)
        code = w.proc.wait(30)
    assert code == 0
    assert _chef_processes(project) == []
    assert not any("Traceback" in ln for ln in list(w.lines.queue))
