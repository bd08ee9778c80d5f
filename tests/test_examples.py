"""The examples build for real (embedded federation, chefs, bwrap, pdflatex, bibtex, gcc) and rebuild
only what an edit makes necessary. Each test builds a copy, so the checkout stays clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from conftest import REPO, majordomo, start_chef, stop_procs

EXAMPLES = REPO / "examples"
_RAN = re.compile(r"^\[\s*\d+/\d+\] ran\s+(\S+) on \S+")


def copy_example(name: str, tmp: Path) -> Path:
    dest = tmp / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("build", ".majordomo"))
    return dest


def ran(stderr: str) -> Counter[str]:
    """How many times each step ran, from the `[i/n] ran     <step> on <chef>` progress lines."""
    return Counter(m.group(1) for line in stderr.splitlines() if (m := _RAN.match(line)))


def build(project: Path) -> Counter[str]:
    run = majordomo(project, "build", "--json", timeout=300)
    assert run.code == 0 and run.summary["ok"], run.stderr
    return ran(run.stderr)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


def pdf_text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split())  # one line: pdftotext breaks lines and hyphenates where TeX did


# -- examples/paper -------------------------------------------------------------------------------


def test_paper_builds_with_resolved_citations_references_and_contents(tmp_path: Path) -> None:
    project = copy_example("paper", tmp_path)
    steps = build(project)
    # The cycle's fixpoint, as latexmk would run it: LaTeX, BibTeX, LaTeX (labels and citations
    # now defined, .aux changes), LaTeX (nothing changes: done). BibTeX needs only one run.
    assert steps["latex"] == 3 and steps["bibtex"] == 1 and steps["table"] == 1, steps
    text = pdf_text(project / "build/paper.pdf")
    assert "??" not in text and "[?]" not in text
    # Table of contents, with page numbers.
    assert re.search(r"Contents 1 Introduction 1 2 Method \d 3 Results \d 4 Discussion \d", text), text[:600]
    # Cross-references resolved to numbers.
    assert "Section 2 describes" in text and "Table 1 lists" in text and "Equation 1" in text
    # Citations resolved, and the formatted entries in the bibliography (plain style sorts by author).
    assert "surroundings [2]" in text and "moderate [3]" in text and "conduction [1]" in text
    assert "[3] Michael Vollmer. Newton\N{RIGHT SINGLE QUOTATION MARK}s law of cooling revisited. European Journal of Physics" in text
    assert "Fundamentals of Heat and Mass Transfer" in text
    # The table the Python step computed from data/cooling.csv, fastest cooling first.
    assert re.search(r"D paper cup 0\.0498 13\.9 C glass 0\.0416 16\.6 A ceramic 0\.0304 22\.8", text)
    # Up to date: nothing runs.
    noop = majordomo(project, "build", "--json")
    assert noop.code == 0 and noop.summary["steps_run"] == 0


def test_paper_paragraph_edit_reruns_latex_only_and_new_citation_reruns_bibtex(tmp_path: Path) -> None:
    project = copy_example("paper", tmp_path)
    build(project)

    edit(project / "sections/method.tex", "The\nreadings are illustrative, not a laboratory record.",
         "The\nreadings are illustrative, taken with a kitchen thermometer.")
    steps = build(project)
    # The .aux did not change, so BibTeX (and the line filter in front of it) stay cached and one
    # LaTeX pass reaches the fixpoint.
    assert steps == Counter({"latex": 1}), steps
    assert "taken with a kitchen thermometer" in pdf_text(project / "build/paper.pdf")

    edit(project / "sections/discussion.tex", "but that is another experiment.",
         "but that is another experiment, and typesetting it another book \\cite{lamport1994}.")
    steps = build(project)
    assert steps["bibtex"] == 1 and steps["latex"] >= 2, steps
    assert "table" not in steps
    text = pdf_text(project / "build/paper.pdf")
    assert "another book [2]" in text and "??" not in text and "[?]" not in text
    assert "Leslie Lamport" in text and "Document Preparation System" in text

    # The cycle started from the last build's .aux and .bbl, yet settles where a clean build does.
    fresh = tmp_path / "fresh"
    shutil.copytree(project, fresh, ignore=shutil.ignore_patterns("build", ".majordomo"))
    build(fresh)
    assert (fresh / "build/paper.pdf").read_bytes() == (project / "build/paper.pdf").read_bytes()


def test_paper_on_a_tex_chef_and_a_shell_chef(tmp_path: Path, nats_url: str) -> None:
    """Only one chef offers latex: the cycle runs there, fed by a table another chef may have made."""
    from artefacts.keys import load_or_create_key

    key = tmp_path / "fedkey" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    homes = tmp_path / "chefs"
    homes.mkdir()
    chefs: list[subprocess.Popen] = []
    try:
        # start_chef always offers shell and cc; the TeX chef is the only one offering latex.
        chefs.append(start_chef(nats_url, homes / "tex", "tex", key, "--kind", "latex", "--slots", "1"))
        chefs.append(start_chef(nats_url, homes / "sh", "sh", key, "--slots", "1"))
        project = copy_example("paper", tmp_path)
        run = majordomo(project, "build", "--json", "--nats", nats_url, env={"MAJORDOMO_KEY": str(key)}, timeout=300)
        assert run.code == 0, run.stderr
        on = {m.group(1): m.group(2) for ln in run.stderr.splitlines()
              if (m := re.match(r"^\[\s*\d+/\d+\] ran\s+(\S+) on (\S+)", ln))}
        assert on["latex"] == on["bibtex"] == "tex"
        text = pdf_text(project / "build/paper.pdf")
        assert "??" not in text and "[?]" not in text and "moderate [3]" in text
        assert re.search(r"D paper cup 0\.0498 13\.9", text)
    finally:
        stop_procs(chefs)


def _break_paper(tmp_path: Path) -> tuple[Path, str]:
    project = copy_example("paper", tmp_path)
    build(project)
    edit(project / "sections/method.tex", "which we\nfit by least squares.", "which we\nfit by \\leastsquares.")
    run = majordomo(project, "build", "--json", timeout=300)
    assert run.code == 1 and run.summary["steps_failed"] == 1 and run.summary["steps_run"] == 0
    return project, run.stderr


def test_paper_latex_error_shows_file_and_line(tmp_path: Path) -> None:
    _project, stderr = _break_paper(tmp_path)
    # -file-line-error and -halt-on-error put the error at the end of the log the build shows.
    assert "sections/method.tex:14: Undefined control sequence." in stderr
    assert "l.14 fit by \\leastsquares" in stderr


def test_paper_latex_failure_message_is_the_error_summary(tmp_path: Path) -> None:
    _project, stderr = _break_paper(tmp_path)
    failed = [ln for ln in stderr.splitlines() if "FAILED  latex" in ln]
    assert failed and re.search(r"sections/method\.tex:14: Undefined control sequence", failed[0]), stderr


# -- examples/pipeline ----------------------------------------------------------------------------


def test_pipeline_early_cutoff(tmp_path: Path) -> None:
    project = copy_example("pipeline", tmp_path)
    steps = build(project)
    assert sum(steps.values()) == 8, steps
    report = (project / "build/report.txt").read_text()
    assert "Mildest on average: airport (12.3)." in report
    assert re.search(r"^hilltop\s+14\s+8\.4\s+1\.7 2024-03-02\s+14\.8 2024-03-11$", report, re.M), report
    raw = project / "raw/harbour.csv"

    # A comment: the cleaner reruns, writes the same bytes, and the rebuild stops there.
    raw.write_text(raw.read_text() + "# checked against the paper log, 15 March\n")
    assert build(project) == Counter({"clean[harbour]": 1})

    # A reading nudged by 0.1: the cleaned data changes, the day's rounded figures do not.
    edit(raw, "2024-03-01T09:00,harbour,9.8,C", "2024-03-01T09:00,harbour,9.9,C")
    assert build(project) == Counter({"clean[harbour]": 1, "daily[harbour]": 1})

    # A real change runs the whole chain, and only that station's branch of it.
    edit(raw, "2024-03-14T15:00,harbour,18.3,C", "2024-03-14T15:00,harbour,21.3,C")
    steps = build(project)
    assert steps == Counter({"clean[harbour]": 1, "daily[harbour]": 1, "summary": 1, "report": 1}), steps
    assert re.search(r"^harbour .* 21\.3 2024-03-14$", (project / "build/report.txt").read_text(), re.M)


# -- examples/c-project ---------------------------------------------------------------------------


def test_c_project_builds_tests_and_rebuilds_minimally(tmp_path: Path) -> None:
    project = copy_example("c-project", tmp_path)
    steps = build(project)
    compiles = [s for s in steps if s.startswith("compile")]
    assert len(compiles) == len(list((project / "src").rglob("*.c"))) + 1  # + the test
    assert (project / "build/test-report.txt").read_text() == "ok: 62 checks, 0 failure(s)\n"
    app = subprocess.run([str(project / "build/app")], capture_output=True, text=True, check=True)
    assert "1/3+1/6=1/2" in app.stdout and "2024-02-29 is a Thursday" in app.stdout

    # A changed source file: that compile, the archive, both links and the test run; nothing else.
    edit(project / "src/lib/roman.c", "int from_roman(const char *s) {",
         "int roman_max(void) { return 3999; }\n\nint from_roman(const char *s) {")
    assert build(project) == Counter(
        {"compile[lib/roman]": 1, "archive": 1, "link": 1, "link-test": 1, "run-test": 1})

    # A header: exactly its includers recompile (depfiles narrow `may_read`); their objects come
    # out identical, so the archive and the links are cut off.
    edit(project / "include/roman.h", "#endif", "/* Roman numerals, 1 to 3999. */\n#endif")
    assert build(project) == Counter({"compile[lib/roman]": 1, "compile[main]": 1, "compile-test[test_lib]": 1})

    # A bug the tests catch fails the build at the test step, with the failing check in the log.
    edit(project / "src/lib/roman.c", "case 'M': return 1000;", "case 'M': return 100;")
    run = majordomo(project, "build", "--json", timeout=300)
    assert run.code == 1 and run.summary["steps_failed"] == 1
    assert "FAILED  run-test" in run.stderr and "from_roman(\"MCMXCIV\") == 1994" in run.stderr
