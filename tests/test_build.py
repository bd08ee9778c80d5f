"""End to end: `majordomo build` on a real federation (nats-server, chef processes, SFTP, sha256sum)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import UPPER_JOIN, majordomo, start_chef, stop_procs, write_project

from artefacts.keys import load_or_create_key

CHAIN = UPPER_JOIN
SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n", "src/c.txt": "gamma\n", "src/d.txt": "delta\n"}


def test_embedded_build_then_noop_then_one_change(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", CHAIN, SOURCES)
    first = majordomo(project, "build", "--json")
    assert first.code == 0, first.stderr
    s = first.summary
    assert (s["ok"], s["steps_run"], s["steps_cached"], s["steps_failed"]) == (True, 5, 0, 0)
    assert (project / "build/all.txt").read_text() == "ALPHA\nBETA\nGAMMA\nDELTA\n"
    # Intermediates stay with the chefs; only the final output comes back.
    assert not (project / "build/a.up").exists()
    # Every chef and the MajorDomo share this host: the four sources reached the chefs, and the final
    # output came back, through the filesystem (verified copies and store links), none over SFTP.
    assert (s["files_pulled"], s["bytes_pulled"]) == (0, 0), s
    assert s["files_local"] >= 5 and s["bytes_local"] >= sum(len(t) for t in SOURCES.values()), s

    # No-op: nothing runs and the embedded federation is not even started.
    run_dir = project / ".majordomo" / "run"
    assert run_dir.exists()
    os.rename(run_dir, project / ".majordomo" / "run-old")
    again = majordomo(project, "build", "--json")
    assert again.code == 0 and again.summary["steps_run"] == 0 and again.summary["steps_cached"] == 5
    assert not run_dir.exists()

    # Touching without changing the bytes reruns nothing.
    os.utime(project / "src/b.txt")
    assert majordomo(project, "build", "--json").summary["steps_run"] == 0

    # Changing one source reruns exactly its step and the join.
    (project / "src/b.txt").write_text("bravo\n")
    changed = majordomo(project, "build", "--json")
    assert changed.summary["steps_run"] == 2 and changed.summary["steps_cached"] == 3
    assert (project / "build/all.txt").read_text() == "ALPHA\nBRAVO\nGAMMA\nDELTA\n"


def test_early_cutoff_when_output_unchanged(tmp_path: Path) -> None:
    recipe = """
    [[step]]
    name = "first-line"
    inputs = ["notes.txt"]
    outputs = ["build/head.txt"]
    command = "head -n1 $< > $@"

    [[step]]
    name = "shout"
    inputs = ["build/head.txt"]
    outputs = ["build/shout.txt"]
    command = "tr a-z A-Z < $< > $@"
    """
    project = write_project(tmp_path / "p", recipe, {"notes.txt": "title\nbody\n"})
    assert majordomo(project, "build", "--json").summary["steps_run"] == 2
    (project / "notes.txt").write_text("title\nanother body\n")  # first line unchanged
    run = majordomo(project, "build", "--json")
    assert run.summary["steps_run"] == 1 and run.summary["steps_cached"] == 1
    assert (project / "build/shout.txt").read_text() == "TITLE\n"


def test_external_federation_uses_both_chefs(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", CHAIN, SOURCES)
    run = majordomo(project, "build", "--json", "--nats", federation.url, env=federation.env)
    assert run.code == 0, run.stdout + run.stderr
    s = run.summary
    assert s["steps_run"] == 5
    # Each chef has one slot and four steps are ready at once: both chefs must cook.
    assert sorted(c["id"] for c in s["chefs"]) == ["chef-a", "chef-b"]
    assert sum(c["steps"] for c in s["chefs"]) == 5
    assert (project / "build/all.txt").read_text() == "ALPHA\nBETA\nGAMMA\nDELTA\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_nats_is_one_clear_line(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", CHAIN, SOURCES)
    url = f"nats://127.0.0.1:{_closed_port()}"
    run = majordomo(project, "build", "--nats", url, timeout=20)
    assert run.code != 0
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and url in lines[0] and "Traceback" not in run.stderr
    assert not (project / "build").exists()


def test_failing_step_keeps_going_and_writes_nothing(tmp_path: Path) -> None:
    recipe = """
    [[step]]
    name = "bad"
    inputs = ["in.txt"]
    outputs = ["build/bad.txt"]
    command = "echo partial > $@; echo 'the compiler says no' >&2; exit 3"

    [[step]]
    name = "after-bad"
    inputs = ["build/bad.txt"]
    outputs = ["build/after.txt"]
    command = "cp $< $@"

    [[step]]
    name = "good"
    inputs = ["in.txt"]
    outputs = ["build/good.txt"]
    command = "cp $< $@"
    """
    project = write_project(tmp_path / "p", recipe, {"in.txt": "x\n"})
    run = majordomo(project, "build", "--json")
    assert run.code == 1
    s = run.summary
    assert (s["ok"], s["steps_run"], s["steps_failed"], s["steps_skipped"]) == (False, 1, 1, 1)
    assert "the compiler says no" in run.stderr and "exit status 3" in run.stderr
    assert not (project / "build/bad.txt").exists()
    assert (project / "build/good.txt").read_text() == "x\n"
    log = majordomo(project, "log", "bad")
    assert log.code == 0 and "the compiler says no" in log.stdout


def test_recipe_errors_name_file_and_line_and_run_nothing(tmp_path: Path) -> None:
    cases = {
        "syntax": ("[[step]]\nname = \"a\"\noutputs = [\"x\"\n", "majordomo.toml:"),
        "unknown field": ('[[step]]\nname = "a"\noutputs = ["x"]\ncommand = "true"\ncomand = "x"\n', "comand"),
        "two producers": (
            '[[step]]\nname = "a"\noutputs = ["x"]\ncommand = "true"\n\n'
            '[[step]]\nname = "b"\noutputs = ["x"]\ncommand = "true"\n', "majordomo.toml:"),
        "missing input": ('[[step]]\nname = "a"\ninputs = ["nope.c"]\noutputs = ["x"]\ncommand = "true"\n', "nope.c"),
    }
    for name, (recipe, expected) in cases.items():
        project = write_project(tmp_path / name.replace(" ", "-"), recipe, {})
        run = majordomo(project, "build")
        assert run.code == 2, name
        assert expected in run.stderr and "majordomo.toml" in run.stderr, (name, run.stderr)
        assert "Traceback" not in run.stderr
        assert not (project / ".majordomo" / "run").exists(), name


SHARED_INPUT = """
[[rule]]
name = "mark"
inputs = ["src/%.txt", "big.bin"]
outputs = ["build/%.out"]
command = "cat $< > $@; wc -c < big.bin >> $@"

[[step]]
name = "all"
inputs = ["build/*.out"]
outputs = ["build/all.txt"]
command = "cat $^ > $@"
"""


@pytest.mark.parametrize("same_host", ["1", "0"])
def test_pulled_bytes_count_each_transfer_once(tmp_path: Path, nats_url: str, same_host: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Four steps on one chef need the same input at once: it is transferred once, and the build's
    summary says so (a step that joined another's transfer is not charged for it) — whether the
    transfers are same-host copies or, with the shortcut off, SFTP pulls."""
    monkeypatch.setenv("CP_SAME_HOST", same_host)
    key = tmp_path / "key" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    (tmp_path / "chefs").mkdir()
    chef = start_chef(nats_url, tmp_path / "chefs" / "solo", "solo", key, "--slots", "4")
    try:
        sources = {f"src/{n}.txt": f"{n}\n" for n in "abcd"}
        project = write_project(tmp_path / "p", SHARED_INPUT, sources)
        big = os.urandom(1 << 20)
        (project / "big.bin").write_bytes(big)
        run = majordomo(project, "build", "--json", "-j", "4", "--nats", nats_url, env={"MAJORDOMO_KEY": str(key)})
        assert run.code == 0, run.stderr
        final = (project / "build/all.txt").read_bytes()
        assert final == b"".join(f"{n}\n{len(big)}\n".encode() for n in "abcd")
        # In: big.bin once and the four sources. Back: the final output.
        files, size = ("files_local", "bytes_local") if same_host == "1" else ("files_pulled", "bytes_pulled")
        assert run.summary[files] == 1 + 4 + 1, run.summary
        assert run.summary[size] == len(big) + sum(map(len, sources.values())) + len(final), run.summary
    finally:
        stop_procs([chef])
