"""`majordomo watch`: rebuilds on change with the federation kept up; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, UPPER_JOIN, children_of, wait_gone, write_project

from majordomo import watch as watch_mod

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
    """The project's chefs: forked by its chefs.fleet process, each named `chef ID` (not the fleet
    itself, nor the chefs' jails)."""
    marker = str(project / ".majordomo" / "chefs").encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/comm", "rb") as f:
                name = f.read()
        except OSError:
            continue
        if marker in cmdline and b"chefs.fleet" in cmdline and name.startswith(b"chef "):
            found.append(int(pid))
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_watch_ended_by_a_signal_leaves_no_server_and_no_chef(tmp_path: Path, sig: signal.Signals) -> None:
    """`timeout`, `kill` or a service manager end a watch with SIGTERM (stopped as Ctrl-C stops it),
    or SIGKILL (its nats-server and chefs die with it): neither leaves its private federation running."""
    project = write_project(tmp_path / "p", RECIPE, {"src/a.txt": "alpha\n"})
    w = Watcher(project)
    try:
        w.until(lambda ln: ln.startswith("watching for changes"))
        federation = children_of(w.proc.pid)  # its nats-server and its chefs' fleet
        names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in federation)
        assert len(names) == 2 and "nats-server" in names, names
        everything = federation + _chef_processes(project)
        assert len(everything) == 4, everything
    finally:
        w.proc.send_signal(sig)
        code = w.proc.wait(30)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert wait_gone(everything) == []


def _built(w: Watcher) -> list[str]:
    lines = w.until(lambda ln: ln.startswith("watching for changes"))
    assert not any(ln.startswith("majordomo:") for ln in lines), lines
    return lines


def test_watch_rebuilds_edits_additions_deletions_and_rename_saves(tmp_path: Path) -> None:
    """Each kind of change a watch sees gives what a clean build gives: edits go the carried-over
    way, additions and deletions (which change what the pattern rule matches) the full way."""
    project = write_project(tmp_path / "p", UPPER_JOIN, {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"})
    w = Watcher(project)
    try:
        assert any(ln.startswith("build ok: 3 run") for ln in _built(w))

        (project / "src/a.txt").write_text("edited\n")  # in place: the carried-over way
        assert any(ln.startswith("build ok: 2 run, 1 cached") for ln in _built(w))
        assert (project / "build/all.txt").read_text() == "EDITED\nBETA\n"

        (project / "src/c.txt").write_text("gamma\n")  # a new source: a new step
        assert any(ln.startswith("build ok: 2 run") for ln in _built(w))
        assert (project / "build/all.txt").read_text() == "EDITED\nBETA\nGAMMA\n"

        (project / "src/b.txt").unlink()  # a deleted source: its step and output go
        _built(w)
        assert (project / "build/all.txt").read_text() == "EDITED\nGAMMA\n"
        assert not (project / "build/b.up").exists()

        # An editor saving by rename: a new file moved over the source.
        (project / "src/.a.txt.new").write_text("renamed\n")
        os.replace(project / "src/.a.txt.new", project / "src/a.txt")
        lines = _built(w)
        assert (project / "build/all.txt").read_text() == "RENAMED\nGAMMA\n", lines

        (project / "src/c.txt").write_text("gamma\n")  # same bytes again: nothing runs
        assert any(ln.startswith("build ok: 0 run") for ln in _built(w))
    finally:
        w.proc.send_signal(signal.SIGINT)
        code = w.proc.wait(30)
    assert code == 0


def test_carried_changes_only_for_changes_that_keep_the_project_shape(tmp_path: Path) -> None:
    """Which watch batches may skip reloading the recipes and checking every source."""
    import watchfiles

    from majordomo.carryover import ArtefactFacts, Carryover
    from majordomo.graph import BuildGraph
    from majordomo.recipes import load_project

    root = write_project(tmp_path / "p", UPPER_JOIN, {"src/a.txt": "alpha\n", "notes.md": "n\n"})
    project = load_project(root)
    graph = BuildGraph(project, {})
    carry = Carryover(root, "", project, graph, graph.units(graph.select([])), ArtefactFacts())
    M, A, D = watchfiles.Change.modified, watchfiles.Change.added, watchfiles.Change.deleted

    def at(rel: str) -> str:
        return str(root / rel)

    assert watch_mod.carried_changes(carry, {(M, at("src/a.txt"))}) == ["src/a.txt"]
    assert watch_mod.carried_changes(carry, {(M, at("notes.md"))}) == []  # read by no step
    assert watch_mod.carried_changes(carry, {(M, at("src"))}) == []  # a directory's mode
    # A file the graph knows, deleted then added back (a rename-save): still the same shape.
    assert watch_mod.carried_changes(carry, {(D, at("src/a.txt")), (A, at("src/a.txt"))}) == ["src/a.txt"]
    assert watch_mod.carried_changes(carry, {(M, at("majordomo.toml"))}) is None
    assert watch_mod.carried_changes(carry, {(A, at("src/new.txt"))}) is None  # the rule may match it
    assert watch_mod.carried_changes(carry, {(A, at("notes2.md"))}) is None
    (root / "src/a.txt").unlink()
    assert watch_mod.carried_changes(carry, {(D, at("src/a.txt"))}) is None
    assert watch_mod.carried_changes(carry, set()) is None  # a rescan
    assert watch_mod.carried_changes(None, {(M, at("notes.md"))}) is None
