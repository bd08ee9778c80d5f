"""The resident build server's carry-over (majordomo/carryover.py): after an edit it visits only the
steps the changed files affect, and it falls back to the full path whenever its memory may be stale.

`steps_visited` in the `--json` summary says which path a build took: all steps on the full path,
only the affected ones on the carried-over path."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from conftest import UPPER_JOIN, majordomo, thin_build, write_project

SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n", "src/c.txt": "gamma\n"}
STEPS = 4  # upper of a, b, c and the join


def _server_build(project: Path) -> dict:
    """`majordomo build --json` through the resident build server (the client must stay thin)."""
    run = thin_build(project, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _served_project(tmp_path: Path) -> Path:
    """A project built twice by its resident server: a first build starts the server and runs in it,
    so the second already starts from its memory."""
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    (project / "src/a.txt").write_text("apple\n")
    second = _server_build(project)
    assert second["steps_visited"] == 2 and second["steps_run"] == 2  # upper of a, the join
    return project


def test_an_edit_visits_only_the_steps_it_affects(tmp_path: Path) -> None:
    project = _served_project(tmp_path)
    (project / "src/b.txt").write_text("bravo\n")
    summary = _server_build(project)
    assert summary["ok"] and summary["steps_visited"] == 2, summary  # upper of b, the join
    assert summary["steps_run"] == 2 and summary["steps_cached"] == 2
    assert (project / "build/all.txt").read_text() == "APPLE\nBRAVO\nGAMMA\n"

    # Early cutoff inside the visited set: new bytes, same upper-case output, so the join is cached.
    (project / "src/c.txt").write_text("GAMMA\n")
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"], summary["steps_cached"]) == (2, 1, 3), summary

    # The executable bit is in keys: a chmod reruns its reader (same output bytes: the join is cut off).
    os.chmod(project / "src/a.txt", 0o755)
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"]) == (2, 1), summary


def test_a_deleted_or_edited_output_is_fetched_again(tmp_path: Path) -> None:
    project = _served_project(tmp_path)
    expected = (project / "build/all.txt").read_text()
    (project / "build/all.txt").write_text("scribbled\n")  # in place: its directory is unchanged
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"]) == (1, 0), summary  # the join, cached: fetched
    assert (project / "build/all.txt").read_text() == expected
    (project / "build/all.txt").unlink()  # its directory changed: the full path
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"]) == (STEPS, 0), summary
    assert (project / "build/all.txt").read_text() == expected


def test_a_new_file_or_recipe_change_takes_the_full_path(tmp_path: Path) -> None:
    project = _served_project(tmp_path)
    (project / "src/d.txt").write_text("delta\n")  # its directory changed: globs may see more
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"]) == (STEPS + 1, 2), summary
    assert (project / "build/all.txt").read_text() == "APPLE\nBETA\nGAMMA\nDELTA\n"
    (project / "majordomo.toml").write_text(UPPER_JOIN.replace("cat $^ > $@", "cat $^ > $@; echo end >> $@"))
    summary = _server_build(project)
    assert (summary["steps_visited"], summary["steps_run"]) == (STEPS + 1, 1), summary
    assert (project / "build/all.txt").read_text().endswith("DELTA\nend\n")


def test_another_process_writing_the_state_takes_the_full_path(tmp_path: Path) -> None:
    """The server cannot see what another process recorded: SQLite's data_version tells it to
    forget what it remembers."""
    project = _served_project(tmp_path)
    with sqlite3.connect(project / ".majordomo" / "state.db") as db:
        db.execute("DELETE FROM results")  # another build's doing, as far as the server knows
    (project / "src/b.txt").write_text("bravo\n")
    summary = _server_build(project)
    # Every step visited, and every step whose result was forgotten runs again.
    assert (summary["steps_visited"], summary["steps_run"]) == (STEPS, STEPS), summary
    assert (project / "build/all.txt").read_text() == "APPLE\nBRAVO\nGAMMA\n"


TWINS = """
[[step]]
name = "x"
inputs = ["src/a.txt", "src/c.txt"]
outputs = ["out/x.txt"]
command = "cat $^ > $@"

[[step]]
name = "y"
inputs = ["src/b.txt"]
outputs = ["out/y.txt"]
command = "cat $^ > $@"
"""


def test_bytes_two_sources_shared_are_still_served_after_one_changes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Found in review: the carried-over map of which workspace file serves which digest kept
    pointing at a file that had changed (or dropped bytes another file still held), so a chef
    that lacked them was served other bytes. Chefs fetch over SFTP here (CP_SAME_HOST=0), and lose
    their copies, so the MajorDomo must serve the bytes of src/a.txt again."""
    import hashlib

    monkeypatch.setenv("CP_SAME_HOST", "0")
    project = write_project(tmp_path / "p", TWINS, {"src/a.txt": "same\n", "src/b.txt": "same\n", "src/c.txt": "c0\n"})
    assert majordomo(project, "build").code == 0
    (project / "src/c.txt").write_text("c1\n")
    assert _server_build(project)["steps_visited"] == 1  # carried over from the first build, run by the server too
    (project / "src/b.txt").write_text("b2\n")  # a.txt alone holds "same" now
    assert _server_build(project)["steps_visited"] == 1
    stored = hashlib.sha256(b"same\n").hexdigest()
    evicted = list((project / ".majordomo").rglob(stored))
    assert evicted, "the chefs' stores should hold the bytes of a.txt"
    for path in evicted:  # as eviction or quarantine would
        os.chmod(path.parent, 0o755)
        path.unlink()
    (project / "src/c.txt").write_text("c2\n")
    summary = _server_build(project)
    assert summary["steps_visited"] == 1 and summary["steps_run"] == 1, summary
    assert (project / "out/x.txt").read_text() == "same\nc2\n"


def test_verbose_lists_every_step(tmp_path: Path) -> None:
    """-v shows the unchanged steps too, so it takes the full path even with a carry-over."""
    project = _served_project(tmp_path)
    (project / "src/b.txt").write_text("bravo\n")
    run = thin_build(project, "-v")
    assert run.returncode == 0, run.stderr
    assert sum(" cached " in line for line in run.stdout.splitlines()) == 2, run.stdout  # upper of a and c
