"""A step that needs a tool no chef has fails at once, naming the tool, not after a timeout."""

from __future__ import annotations

from pathlib import Path

from conftest import majordomo, write_project

RECIPE = """
[[step]]
name = "render"
inputs = ["in.txt"]
outputs = ["out/in.svg"]
tools = ["frobnicate-9000"]
command = "frobnicate-9000 $< > $@"

[[step]]
name = "fine"
inputs = ["in.txt"]
outputs = ["out/fine.txt"]
command = "cp $< $@"
"""


def test_missing_tool_is_named_embedded(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "x\n"})
    run = majordomo(project, "build", "--json", timeout=60)
    assert run.code == 1
    assert "FAILED  render: no chef has tool frobnicate-9000" in run.stderr
    assert run.summary["steps_failed"] == 1 and run.summary["steps_run"] == 1  # the other step still ran


def test_missing_tool_is_named_on_a_federation(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "x\n"})
    run = majordomo(project, "build", "--json", "--nats", federation.url, env=federation.env, timeout=60)
    assert run.code == 1
    line = next(ln for ln in run.stderr.splitlines() if "FAILED  render" in ln)
    assert "frobnicate-9000" in line
