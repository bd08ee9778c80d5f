"""Cycles are first-class: a strongly connected component runs to its fixpoint, or fails naming
the artefact that keeps changing."""

from __future__ import annotations

from pathlib import Path

from conftest import majordomo, write_project

TWO_STEP_CYCLE = """
# "latex" reads what "bib" made from its own last output, like pdflatex and bibtex via .aux/.bbl.
[[step]]
name = "latex"
inputs = ["doc.txt", "gen/refs.txt"]
outputs = ["gen/aux.txt", "out/doc.out"]
command = "r=$$(cat gen/refs.txt 2>/dev/null || echo 0); n=$$(( r < $$(cat doc.txt) ? r + 1 : r )); echo $$n > gen/aux.txt; echo doc-$$n > out/doc.out"

[[step]]
name = "bib"
inputs = ["gen/aux.txt"]
outputs = ["gen/refs.txt"]
command = "cp gen/aux.txt gen/refs.txt"
"""


def _ran(run_stderr: str, step: str) -> int:
    return sum(1 for ln in run_stderr.splitlines() if f" ran     {step} on " in ln)


def test_cycle_runs_to_fixpoint_and_then_is_up_to_date(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", TWO_STEP_CYCLE, {"doc.txt": "2\n"})
    first = majordomo(project, "build", "--json")
    assert first.code == 0, first.stderr
    # refs: absent -> 1 -> 2 -> 2: three passes of latex; the last pass changes nothing.
    assert (project / "out/doc.out").read_text() == "doc-2\n"
    assert _ran(first.stderr, "latex") == 3
    noop = majordomo(project, "build", "--json")
    assert noop.summary["steps_run"] == 0
    (project / "doc.txt").write_text("3\n")
    again = majordomo(project, "build", "--json")
    assert again.code == 0
    assert (project / "out/doc.out").read_text() == "doc-3\n"
    # Starting from the last fixpoint (refs=2): one pass to reach 3, one to confirm.
    assert _ran(again.stderr, "latex") == 2


def test_oscillating_cycle_names_the_artefact(tmp_path: Path) -> None:
    recipe = """
    [[step]]
    name = "toggle"
    inputs = ["seed.txt", "out/t.txt"]
    outputs = ["out/t.txt"]
    max_passes = 4
    command = "v=$$(cat out/t.txt 2>/dev/null); if [ \\"$$v\\" = a ]; then echo b > out/t.txt; else echo a > out/t.txt; fi"
    """
    project = write_project(tmp_path / "p", recipe, {"seed.txt": "x\n"})
    run = majordomo(project, "build", "--json")
    assert run.code == 1
    assert run.summary["steps_failed"] == 1
    message = next(ln for ln in run.stderr.splitlines() if "FAILED" in ln)
    assert "did not settle in 4 passes" in message and "out/t.txt" in message
    assert not (project / "out/t.txt").exists()  # nothing half-settled reaches the workspace


def test_failing_cycle_member_accounts_for_every_step(tmp_path: Path) -> None:
    # The first member fails in the first pass: the second never runs, and says why.
    recipe = TWO_STEP_CYCLE.replace("echo doc-$$n > out/doc.out", "exit 3")
    project = write_project(tmp_path / "p", recipe, {"doc.txt": "2\n"})
    run = majordomo(project, "build", "--json")
    assert run.code == 1
    s = run.summary
    assert (s["steps_run"], s["steps_failed"], s["steps_skipped"]) == (0, 1, 1)
    assert "skipped bib: latex failed in its cycle" in run.stderr
    assert not (project / "out/doc.out").exists()
