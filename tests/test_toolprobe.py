"""Tool identities: probed once per binary, shared across projects and chefs through the per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from artefacts.toolprobe import ToolProbe

TOOL = "cp-fake-tool"


@pytest.fixture
def fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A tool on PATH that answers `--version` and counts how often it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "runs"
    tool = bin_dir / TOOL
    _write_tool(tool, "1.0", runs)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tool, runs


def _write_tool(tool: Path, version: str, runs: Path) -> None:
    tool.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'fake tool {version}'\n")
    tool.chmod(0o755)


def _runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


async def test_a_second_project_reuses_the_probe_through_the_machine_cache(
        tmp_path: Path, fake_tool: tuple[Path, Path]) -> None:
    tool, runs = fake_tool
    machine = tmp_path / "cache" / "computepods" / "tools.json"
    first = ToolProbe(tmp_path / "project-a.json", machine)
    assert await first.identity(TOOL) == "fake tool 1.0"
    first.save()
    assert _runs(runs) == 1 and machine.exists()

    second = ToolProbe(tmp_path / "project-b.json", machine)  # a new checkout: its own file is empty
    assert await second.identity(TOOL) == "fake tool 1.0"
    assert _runs(runs) == 1  # not asked again
    second.save()
    assert ToolProbe(tmp_path / "project-b.json", tmp_path / "no-machine.json").cached_identity(TOOL) == "fake tool 1.0"

    _write_tool(tool, "2.0.1", runs)  # another build of the tool (another size): both caches miss
    third = ToolProbe(tmp_path / "project-a.json", machine)
    assert await third.identity(TOOL) == "fake tool 2.0.1"
    assert _runs(runs) == 2


async def test_an_unwritable_machine_cache_only_costs_probes(tmp_path: Path, fake_tool: tuple[Path, Path]) -> None:
    _tool, runs = fake_tool
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    probe = ToolProbe(tmp_path / "project.json", blocked / "tools.json")  # its parent cannot be made
    assert await probe.identity(TOOL) == "fake tool 1.0"
    probe.save()  # no exception: the project's own file is still written
    assert ToolProbe(tmp_path / "project.json", blocked / "tools.json").cached_identity(TOOL) == "fake tool 1.0"
    assert _runs(runs) == 1
