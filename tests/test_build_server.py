"""The resident build server: once the embedded federation is up, `majordomo build` is a thin
client that hands the build to it (majordomo/build_server.py, majordomo/build_client.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, THIN, UPPER_JOIN, majordomo, thin_build, write_project

SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"}
BOUND_S = 60.0

def _resident_pid(project: Path) -> int:
    return int(json.loads((project / ".majordomo" / "resident.json").read_text())["pid"])


def test_a_build_after_the_first_runs_in_the_resident_server(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0  # in-process: it starts the resident federation
    (project / "src/b.txt").write_text("bravo\n")
    run = thin_build(project, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])  # --json: the summary is stdout's last line
    assert summary["ok"] and summary["steps_run"] == 2 and summary["steps_cached"] == 1
    assert "build ok: 2 run" in run.stderr  # the human lines go to stderr with --json, as in-process
    assert (project / "build/all.txt").read_text() == "ALPHA\nBRAVO\n"

    # A failing step: its message and exit code come back through the server too.
    (project / "majordomo.toml").write_text(UPPER_JOIN.replace("cat $^ > $@", "cat $^ > $@; exit 3"))
    failed = thin_build(project)
    assert failed.returncode == 1, failed.stderr
    assert "join" in failed.stdout and "FAILED" in failed.stdout.upper()


def test_a_recipe_error_is_reported_by_the_server_and_changes_nothing(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    before = (project / "build/all.txt").read_text()
    (project / "majordomo.toml").write_text(UPPER_JOIN + "\n[[step]]\nname = \n")
    run = thin_build(project)
    assert run.returncode == 2 and "majordomo.toml" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert (project / "build/all.txt").read_text() == before


def test_another_environment_gets_another_resident_federation(tmp_path: Path) -> None:
    """Chefs take PATH and CP_* settings from the build that started them: a build with others
    must not use them."""
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    first = _resident_pid(project)
    (project / "src/a.txt").write_text("apple\n")
    run = majordomo(project, "build", "--json", env={"CP_SAME_HOST": "0"})
    assert run.code == 0 and run.summary["steps_run"] == 2, run.stderr
    assert _resident_pid(project) != first


def test_ctrl_c_of_the_client_cancels_its_build_in_the_server(tmp_path: Path) -> None:
    recipe = UPPER_JOIN + '\n[[step]]\nname = "slow"\ninputs = ["build/all.txt"]\noutputs = ["build/slow.txt"]\n' \
                          'command = "sleep $NAP; cp $< $@"\n\n[vars]\nNAP = "0"\n'
    project = write_project(tmp_path / "p", recipe, SOURCES)
    assert majordomo(project, "build").code == 0
    (project / "src/a.txt").write_text("apple\n")
    nap = "397.25"  # a duration no other process on the machine sleeps for
    client = subprocess.Popen([sys.executable, "-c", THIN, "build", "-C", str(project), "--var", f"NAP={nap}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert _wait_for(lambda: _sleepers(nap)), "the slow step never started"
        client.send_signal(signal.SIGINT)
        assert client.wait(BOUND_S) == 130
        assert "interrupted" in (client.stderr.read() if client.stderr else "")
        assert _wait_for(lambda: not _sleepers(nap)), "the server did not cancel the step"
    finally:
        if client.poll() is None:
            client.kill()
    # The server is still up and serves the next build; the cancelled step was never recorded.
    pid = _resident_pid(project)
    run = thin_build(project, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["steps_run"] == 1  # slow only: the rest finished
    assert _resident_pid(project) == pid
    assert (project / "build/slow.txt").read_text() == "APPLE\nBETA\n"


def _sleepers(nap: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", nap.encode()]:
                found.append(int(entry))
    return found


def _wait_for(condition) -> bool:  # type: ignore[no-untyped-def]
    """Poll /proc until `condition` holds (other processes' lives have no event for us), bounded."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_server_sees_edits_no_event_reports(tmp_path: Path) -> None:
    """The server compares with the stamp only the files its inotify watch named, plus those a
    directory watch cannot vouch for: a file with another hard link written through it, and a
    symlink whose target changes outside the project, raise no event in the project."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.txt").write_text("charlie\n")
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    os.link(project / "src/b.txt", outside / "b.txt")
    (project / "src/c.txt").symlink_to(outside / "c.txt")
    assert majordomo(project, "build").code == 0  # in-process: it starts the resident server
    (project / "src/a.txt").write_text("apple\n")
    assert thin_build(project).returncode == 0  # the server's first build: it watches from here on
    assert "nothing changed" in thin_build(project).stdout

    (outside / "b.txt").write_text("bravo\n")
    run = thin_build(project)
    assert run.returncode == 0 and "nothing changed" not in run.stdout, run.stdout
    assert (project / "build/all.txt").read_text() == "APPLE\nBRAVO\nCHARLIE\n"

    (outside / "c.txt").write_text("chaplin\n")
    run = thin_build(project)
    assert run.returncode == 0 and "nothing changed" not in run.stdout, run.stdout
    assert (project / "build/all.txt").read_text() == "APPLE\nBRAVO\nCHAPLIN\n"

    (project / "src/a.txt").write_text("avocado\n")  # an ordinary edit, seen by its event
    assert thin_build(project).returncode == 0
    assert (project / "build/all.txt").read_text() == "AVOCADO\nBRAVO\nCHAPLIN\n"


def test_a_server_with_no_build_of_its_own_answers_no_ops_and_sees_edits(tmp_path: Path) -> None:
    """Right after the first (in-process) build the server has no memory of a build: it checks the
    stamp on disk, then watches it, so later no-ops compare only what events name; an edit, or a
    write through another hard link (no event), still rebuilds."""
    outside = tmp_path / "outside"
    outside.mkdir()
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    os.link(project / "src/b.txt", outside / "b.txt")
    assert majordomo(project, "build").code == 0
    assert "nothing changed" in thin_build(project).stdout  # the stamp on disk, checked whole
    assert "nothing changed" in thin_build(project).stdout  # the same stamp, now watched
    (outside / "b.txt").write_text("bravo\n")
    run = thin_build(project)
    assert run.returncode == 0 and "nothing changed" not in run.stdout, run.stdout
    assert (project / "build/all.txt").read_text() == "ALPHA\nBRAVO\n"
    assert "nothing changed" in thin_build(project).stdout
    (project / "src/a.txt").write_text("apple\n")
    run = thin_build(project)
    assert run.returncode == 0 and "nothing changed" not in run.stdout, run.stdout
    assert (project / "build/all.txt").read_text() == "APPLE\nBRAVO\n"


def _processes_of(project: Path) -> list[int]:
    """Processes whose command line names the project's state directory: its supervisor, nats-server, chefs."""
    marker = str(project / ".majordomo").encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_a_first_build_runs_in_the_resident_server_it_starts(tmp_path: Path) -> None:
    """A fresh project's first build starts the resident federation and hands itself to its build
    server, which reads the recipes while the chefs start: the client imports no NATS (THIN)."""
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    run = thin_build(project, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["steps_run"] == 3
    assert (project / "build/all.txt").read_text() == "ALPHA\nBETA\n"
    info = json.loads((project / ".majordomo" / "resident.json").read_text())
    assert info["chefs"] == "ready"

    (project / "src/a.txt").write_text("apple\n")  # the same server builds the next one
    again = thin_build(project, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps_run"] == 2
    assert _resident_pid(project) == info["pid"]


def test_a_first_build_with_a_recipe_error_leaves_nothing_behind(tmp_path: Path) -> None:
    """The federation it started for nothing is stopped, and the state directory it made is gone."""
    project = write_project(tmp_path / "p", UPPER_JOIN + "\n[[step]]\nname = \n", SOURCES)
    run = thin_build(project)
    assert run.returncode == 2 and "majordomo.toml" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (project / ".majordomo").exists()
    assert _processes_of(project) == []


def test_a_first_build_whose_chefs_cannot_start_says_why_and_keeps_their_logs(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    (project / ".majordomo" / "chefs").mkdir(parents=True)
    (project / ".majordomo" / "chefs" / "local-1").write_text("not a directory: chef local-1 cannot make its home\n")
    run = thin_build(project)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "local chefs did not start" in run.stderr and "chef local-1 ended with 1" in run.stderr, run.stderr
    assert "FileExistsError" in (project / ".majordomo" / "chefs" / "fleet.log").read_text()
    assert _wait_for(lambda: not _processes_of(project)), _processes_of(project)
    assert not (project / ".majordomo" / "resident.json").exists()
