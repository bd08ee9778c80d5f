"""chefs/fleet.py: several chefs forked from one interpreter, living and ending together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, children_of, wait_gone

BOUND_S = 30.0


def _fleet_argv(homes: Path, ids: str, url: str | None) -> list[str]:
    """A fleet's command line; without `url`, the fleet reads it on stdin."""
    nats = ["--", "--nats", url] if url else ["--nats-from-stdin", "--"]
    return [sys.executable, "-m", "chefs.fleet", "--homes", str(homes), "--ids", ids, *nats,
            "--kind", "shell", "--no-hand-over"]


def _start_fleet(url: str, homes: Path, ids: str, *, url_on_stdin: bool = False) -> subprocess.Popen[str]:
    fleet = subprocess.Popen(
        _fleet_argv(homes, ids, None if url_on_stdin else url), stdin=subprocess.PIPE if url_on_stdin else None,
        stdout=subprocess.PIPE, stderr=open(homes.parent / "fleet.log", "wb"), text=True, cwd=REPO,
        start_new_session=True)
    assert fleet.stdout
    if url_on_stdin:
        assert fleet.stdin
        fleet.stdin.write(f"{url}\n")
        fleet.stdin.close()
    lines = [fleet.stdout.readline() for _ in ids.split(",")]  # one line per chef, once registered
    logs = [(homes.parent / "fleet.log").read_text(), *(p.read_text() for p in homes.glob("*/chef.log"))]
    assert sorted(lines) == sorted(f"chef {i} ready\n" for i in ids.split(",")), (lines, logs)
    return fleet


def _stop_all(fleet: subprocess.Popen[str], chefs: dict[str, int]) -> None:
    """SIGTERM ends the fleet cleanly, and every chef with it."""
    fleet.send_signal(signal.SIGTERM)
    assert fleet.wait(BOUND_S) == 0
    assert wait_gone(list(chefs.values())) == []


def _chefs_of(fleet: int) -> dict[str, int]:
    """The fleet's children by process name (`chef ID`)."""
    return {Path(f"/proc/{pid}/comm").read_text().strip(): pid for pid in children_of(fleet)}


def test_a_fleet_runs_each_chef_in_its_own_named_process_and_sigterm_stops_them(nats_url: str,
                                                                                tmp_path: Path) -> None:
    homes = tmp_path / "chefs"
    fleet = _start_fleet(nats_url, homes, "one,two")
    try:
        chefs = _chefs_of(fleet.pid)
        assert set(chefs) == {"chef one", "chef two"}, chefs
        for chef_id in ("one", "two"):
            assert "ready" in (homes / chef_id / "chef.log").read_text()  # each chef logs to its own home
        _stop_all(fleet, chefs)
    finally:
        if fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGKILL)


def test_when_one_chef_dies_the_fleet_stops_the_others_and_says_which(nats_url: str, tmp_path: Path) -> None:
    """The embedded federation restarts its chefs together: a fleet with one chef missing must end."""
    homes = tmp_path / "chefs"
    fleet = _start_fleet(nats_url, homes, "one,two")
    try:
        chefs = _chefs_of(fleet.pid)
        os.kill(chefs["chef one"], signal.SIGKILL)
        assert fleet.wait(BOUND_S) == 128 + signal.SIGKILL
        assert wait_gone([chefs["chef two"]]) == []
        log = (tmp_path / "fleet.log").read_text()
        assert "chef one ended with -9" in log and "chef two ended" not in log, log
    finally:
        if fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGKILL)


def test_a_bad_chef_argument_stops_the_fleet_before_any_chef_starts(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "chefs.fleet", "--homes", str(tmp_path), "--ids", "one", "--",
                          "--nats", "nats://127.0.0.1:1", "--kind", "no-such-kind"],
                         capture_output=True, text=True, cwd=REPO, timeout=BOUND_S)
    assert run.returncode == 2 and "no-such-kind" in run.stderr, run.stderr
    assert not (tmp_path / "one").exists()


def test_a_fleet_started_before_its_server_takes_the_url_on_stdin(nats_url: str, tmp_path: Path) -> None:
    """The embedded federation starts the fleet first (its imports overlap nats-server's start) and
    gives it the URL once the server listens; a fleet that gets none forks no chef."""
    homes = tmp_path / "chefs"
    fleet = _start_fleet(nats_url, homes, "one,two", url_on_stdin=True)
    try:
        chefs = _chefs_of(fleet.pid)
        for pid in chefs.values():  # the URL's pipe is not kept open by the chefs
            assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        _stop_all(fleet, chefs)
    finally:
        if fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGKILL)

    none = subprocess.run(_fleet_argv(homes, "one,two", None), input="", capture_output=True, text=True,
                          cwd=REPO, timeout=BOUND_S)
    assert none.returncode == 2 and "no NATS URL on stdin" in none.stderr, none.stderr
