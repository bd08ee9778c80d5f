"""The embedded federation stays up between builds, and never lingers or leaks processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import GONE_S, REPO, UPPER_JOIN, alive, children_of, majordomo, wait_gone, write_project

from artefacts.keys import load_or_create_key

SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"}


def _resident(project: Path) -> dict:
    return json.loads((project / ".majordomo" / "resident.json").read_text())


def _federation_processes(supervisor: int) -> list[int]:
    """The supervisor, its nats-server and chefs' fleet, and the chefs the fleet forked (not the
    chefs' own jails)."""
    children = children_of(supervisor)
    return [supervisor, *children, *(chef for child in children for chef in children_of(child))]


def test_builds_join_the_resident_federation_and_stop_ends_it(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    first = majordomo(project, "build", "--json")
    assert first.code == 0, first.stderr
    resident = _resident(project)
    children = children_of(resident["pid"])  # a nats-server and the chefs' fleet
    chefs = [chef for child in children for chef in children_of(child)]  # the two chefs the fleet forked
    processes = [resident["pid"], *children, *chefs]
    assert len(children) == 2 and len(chefs) == 2, processes

    (project / "src/a.txt").write_text("apple\n")
    second = majordomo(project, "build", "--json")
    assert second.code == 0 and second.summary["steps_run"] == 2, second.stderr
    assert (project / "build/all.txt").read_text() == "APPLE\nBETA\n"
    assert _resident(project)["pid"] == resident["pid"]  # joined, not started again
    assert [p for p in processes if alive(p)] == processes

    stop = majordomo(project, "stop")
    assert stop.code == 0 and "stopped" in stop.stderr
    assert wait_gone(processes) == []
    assert not (project / ".majordomo" / "resident.json").exists()
    log = (project / ".majordomo" / "resident.log").read_text()
    assert f"[{resident['pid']}]: up: nats " in log and f"[{resident['pid']}]: stopping: asked to" in log


def test_an_idle_federation_stops_itself(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    run = majordomo(project, "build", env={"MAJORDOMO_RESIDENT": "1"})
    assert run.code == 0, run.stderr
    resident = _resident(project)
    processes = _federation_processes(resident["pid"])
    assert len(processes) == 5, processes
    assert wait_gone(processes) == []
    assert not (project / ".majordomo" / "resident.json").exists()
    assert "stopping: no build for 1 s" in (project / ".majordomo" / "resident.log").read_text()  # says why


def test_a_killed_supervisor_takes_its_processes_along_and_the_next_build_starts_afresh(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    resident = _resident(project)
    processes = _federation_processes(resident["pid"])
    assert len(processes) == 5, processes
    os.kill(resident["pid"], signal.SIGKILL)
    assert wait_gone(processes) == []  # the kernel tells them their parent died

    (project / "src/b.txt").write_text("bravo\n")
    run = majordomo(project, "build", "--json")
    assert run.code == 0 and run.summary["steps_run"] == 2, run.stderr
    assert _resident(project)["pid"] != resident["pid"]
    assert (project / "build/all.txt").read_text() == "ALPHA\nBRAVO\n"


def test_a_build_with_another_key_does_not_join(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    first = _resident(project)
    other = tmp_path / "other-key"
    load_or_create_key(other)
    (project / "src/a.txt").write_text("apple\n")
    run = majordomo(project, "build", "--json", env={"MAJORDOMO_KEY": str(other)})
    assert run.code == 0 and run.summary["steps_run"] == 2, run.stderr
    again = _resident(project)
    assert again["pid"] != first["pid"] and again["key"] == str(other)
    assert wait_gone([first["pid"]]) == []


def test_watch_runs_its_own_federation_and_leaves_nothing(tmp_path: Path) -> None:
    """A watch session's federation is private: it stops a resident one rather than share the
    chefs' stores with it, and its Ctrl-C leaves no process (tests/test_watch.py checks that)."""
    project = write_project(tmp_path / "p", UPPER_JOIN, SOURCES)
    assert majordomo(project, "build").code == 0
    supervisor = _resident(project)["pid"]
    (project / "src/a.txt").write_text("apple\n")  # so that the watch's first build has a step to run
    proc = subprocess.Popen([sys.executable, "-m", "majordomo.cli", "watch", "-C", str(project)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        assert proc.stdout
        for line in proc.stdout:  # the first build's summary: an event, not a sleep
            if "build ok" in line:
                break
        assert wait_gone([supervisor]) == []
        assert not (project / ".majordomo" / "resident.json").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


async def test_a_first_build_starts_the_resident_federation_before_its_own_imports(tmp_path: Path,
                                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The join is handed to a thread at once: the build then imports nats-py and asyncssh (~90 ms,
    without yielding to the loop) while the resident processes start. A join that waits for the
    loop to run again would only start after those imports."""
    import threading
    from types import SimpleNamespace

    import majordomo.resident
    from majordomo.engine import Build

    started = threading.Event()

    def join_or_start(state_dir: Path, key: str, idle_s: float) -> str:
        started.set()
        return "nats://127.0.0.1:1"

    monkeypatch.setattr(majordomo.resident, "join_or_start", join_or_start)
    monkeypatch.setenv("MAJORDOMO_RESIDENT", "600")
    build = SimpleNamespace(_shared=None, options=SimpleNamespace(nats_url=None), root=tmp_path)
    joining = Build._join_resident_early(build)  # type: ignore[arg-type]
    assert joining is not None
    assert started.wait(GONE_S), "the join had not started before the loop ran again"  # no await in between
    assert await joining == "nats://127.0.0.1:1"


def test_the_supervisor_starts_nats_and_chefs_without_importing_the_federation_stack(tmp_path: Path) -> None:
    """What the supervisor runs before its chefs start imports neither nats-py nor asyncssh (~120 ms
    the chefs would otherwise wait for), and an existing key pair is passed on, not read."""
    keys = tmp_path / ".majordomo" / "keys"
    keys.mkdir(parents=True)
    (keys / "federation").write_text("read by the chefs, not here\n")
    (keys / "federation.pub").write_text("ssh-ed25519 AAAA\n")
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "import artefacts.embedded_nats, majordomo.local_chefs, majordomo.resident\n"
        f"print(asyncio.run(majordomo.resident.embedded_keys(Path({str(tmp_path / '.majordomo')!r}))))\n"
        "print(sorted(m for m in ('nats', 'asyncssh', 'majordomo.federation', 'majordomo.build_server')"
        " if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "MAJORDOMO_KEY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == repr((keys / "federation", keys / "federation.pub"))
    assert out[1] == "[]"
