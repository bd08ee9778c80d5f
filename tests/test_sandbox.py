"""Isolation: a step sees only its declared inputs (read-only), its outputs, the system's tools,
and no network. Real bwrap (installed by deploy/setup-debian.sh)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
from conftest import majordomo, require, write_project

from artefacts.store import Store
from chefs.cooking import Cook
from chefs.sandbox import _tool_root, can_protect_by_owner, input_owner
from protocol.errors import ErrorCode
from protocol.messages import InputRef, StepRequest


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require(shutil.which("bwrap") is not None, "bwrap is not installed")


def _one_step(tmp_path: Path, command: str) -> tuple[Path, object]:
    recipe = f"""
[[step]]
name = "probe"
inputs = ["in.txt"]
outputs = ["out/probe.txt"]
command = '''{command}'''

[[step]]
name = "reader"
inputs = ["in.txt"]
outputs = ["out/reader.txt"]
command = "cp $< $@"
"""
    project = write_project(tmp_path / "p", recipe, {"in.txt": "original\n", "secret.txt": "top secret\n"})
    return project, majordomo(project, "build", "--json")


def test_undeclared_project_file_cannot_be_read(tmp_path: Path) -> None:
    project = tmp_path / "p"
    # By relative path (not in the task dir) and by the project's absolute path (not mounted).
    command = f"cat secret.txt > $@ || cat {project}/secret.txt > $@"
    project, run = _one_step(tmp_path, command)
    assert run.code == 1
    assert "No such file or directory" in run.stderr
    assert not (project / "out/probe.txt").exists()


def test_input_cannot_be_modified(tmp_path: Path) -> None:
    project, run = _one_step(tmp_path, "(chmod u+w in.txt || true) && echo tampered >> in.txt && cp in.txt $@")
    assert run.code == 1  # even after a chmod attempt the write fails: the input is `nobody`'s, 0444
    assert "Read-only file system" in run.stderr or "Permission denied" in run.stderr
    # Whatever the probe tried, every other step (and the store) still sees the original bytes.
    assert (project / "out/reader.txt").read_text() == "original\n"
    assert (project / "in.txt").read_text() == "original\n"


def test_no_network(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        command = (f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' "
                   "&& echo connected > $@")
        project, run = _one_step(tmp_path, command)
    assert run.code == 1
    assert "ConnectionRefusedError" in run.stderr  # its own empty loopback, not the host's
    assert not (project / "out/probe.txt").exists()


def test_home_and_other_chefs_are_invisible(tmp_path: Path) -> None:
    project, run = _one_step(tmp_path, f"ls {Path.home()} > $@ 2>&1 && ls {tmp_path} >> $@")
    assert run.code == 1 and not (project / "out/probe.txt").exists()


def _cook_tamper_step(tmp_path: Path, protect_by_owner: bool) -> tuple[object, Path, Store]:
    store = Store(tmp_path / "store")
    source = tmp_path / "in.txt"
    source.write_text("original\n")
    [(digest, size)] = asyncio.run(store.ingest([source]))
    cook = Cook(store, tmp_path / "tasks", {}, protect_by_owner=protect_by_owner)
    step = StepRequest(step_id="probe", action_key="k", kind="shell", pods=[],
                       command="(chmod u+w in.txt || true) && echo tampered >> in.txt; cp in.txt out.txt",
                       inputs=[InputRef(path="in.txt", digest=digest, size=size)], outputs=["out.txt"])

    async def run() -> object:
        outcome = await cook.run(step)
        await cook.drain()
        return outcome

    return asyncio.run(run()), store.path_for(digest), store


@pytest.mark.parametrize("protect_by_owner", [True, False], ids=["by-owner", "by-mount"])
def test_both_input_protections_hold(tmp_path: Path, protect_by_owner: bool) -> None:
    """Root chefs give inputs to `nobody` (no mount per input); others bind each input read-only.
    Either way the step's write fails and the stored bytes stay."""
    if protect_by_owner:
        require(can_protect_by_owner(tmp_path / "probe"), "giving files to nobody needs root")
    outcome, stored, _store = _cook_tamper_step(tmp_path, protect_by_owner)
    assert outcome.code == ErrorCode.OK  # the command goes on after the failed write: `;`
    assert "Permission denied" in outcome.log or "Read-only file system" in outcome.log
    assert stored.read_text() == "original\n"
    assert (stored.stat().st_uid == input_owner()[0]) == protect_by_owner


def test_tool_roots_merge_only_tool_installs_in_a_home() -> None:
    homes = frozenset({"/home/alice", "/root"})
    assert _tool_root("/root/.pyenv/versions/3.11.7/bin", homes) == "/root/.pyenv"
    assert _tool_root("/home/alice/.local/bin", homes) == "/home/alice/.local"
    assert _tool_root("/home/alice/thesis/.venv/bin", homes) is None  # could hold a project
    assert _tool_root("/home/alice/bin", homes) is None
    assert _tool_root("/usr/bin", homes) is None
