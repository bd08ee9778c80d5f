"""Consequential vs inconsequential changes: a normaliser's digest decides early cutoff."""

from __future__ import annotations

from pathlib import Path

from conftest import majordomo, write_project

RECIPE = """
[[step]]
name = "report"
inputs = ["data.txt"]
outputs = ["out/report.txt"]
# A real clock in the output: every run differs, like a PDF's creation date.
command = "echo \\"# generated $$(date +%s%N)\\" > $@; grep -v '^#' $< | sort >> $@"
{normalise}

[[step]]
name = "summary"
inputs = ["out/report.txt"]
outputs = ["out/summary.txt"]
command = "grep -v '^#' $< | wc -l > $@"
"""


def _ran(stderr: str) -> set[str]:
    return {ln.split()[2] for ln in stderr.splitlines() if " ran     " in ln}


def test_normalised_output_stops_the_rebuild(tmp_path: Path) -> None:
    recipe = RECIPE.format(normalise='normalise = { "out/report.txt" = { regex = "^# generated" } }')
    project = write_project(tmp_path / "p", recipe, {"data.txt": "b\na\n"})
    assert majordomo(project, "build").code == 0
    (project / "data.txt").write_text("# a comment the report drops\nb\na\n")
    run = majordomo(project, "build", "--json")
    assert _ran(run.stderr) == {"report"}  # the report's bytes changed, only in its timestamp
    assert (project / "out/summary.txt").read_text().strip() == "2"
    (project / "data.txt").write_text("b\na\nc\n")  # a consequential change
    run = majordomo(project, "build", "--json")
    assert _ran(run.stderr) == {"report", "summary"}
    assert (project / "out/summary.txt").read_text().strip() == "3"


def test_without_normaliser_the_timestamp_reruns_dependants(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE.format(normalise=""), {"data.txt": "b\na\n"})
    assert majordomo(project, "build").code == 0
    (project / "data.txt").write_text("# a comment the report drops\nb\na\n")
    assert _ran(majordomo(project, "build", "--json").stderr) == {"report", "summary"}


def test_unknown_normaliser_is_a_recipe_error(tmp_path: Path) -> None:
    recipe = RECIPE.format(normalise='normalise = { "out/report.txt" = "pdff" }')
    project = write_project(tmp_path / "p", recipe, {"data.txt": "b\na\n"})
    run = majordomo(project, "build")
    assert run.code == 2 and "Traceback" not in run.stderr
    assert "majordomo.toml:" in run.stderr and "pdff" in run.stderr and "'report'" in run.stderr
    assert not (project / "out").exists()
