"""The first LaTeX/BibTeX error in a few lines: real pdflatex and bibtex runs of broken documents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chefs.latexlog import summarise_latex_log

FLAGS = ["-interaction=nonstopmode", "-halt-on-error"]
PREAMBLE = "\\documentclass{article}\n\\begin{document}\n"


def pdflatex(tmp: Path, files: dict[str, str], *, file_line_error: bool = True) -> tuple[str, str]:
    """Run pdflatex on main.tex (must fail); return its terminal output and its .log text."""
    for name, text in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    argv = ["pdflatex", *FLAGS, *(["-file-line-error"] if file_line_error else []), "main.tex"]
    proc = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, errors="replace", timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8"})
    assert proc.returncode != 0, "the document was meant to fail"
    return proc.stdout, (tmp / "main.log").read_text(errors="replace")


UNDEFINED = {
    "main.tex": PREAMBLE + "Hello.\n\n\\input{sections/part}\n\\end{document}\n",
    "sections/part.tex": "First line.\nWe see \\foo bar baz.\nLast line.\n",
}


@pytest.mark.parametrize("file_line_error", [True, False], ids=["file-line-error", "classic"])
def test_undefined_control_sequence_in_an_input_file(tmp_path: Path, file_line_error: bool) -> None:
    stdout, log = pdflatex(tmp_path, UNDEFINED, file_line_error=file_line_error)
    for text in (stdout, log):
        summary = summarise_latex_log(text, {"main.tex", "sections/part.tex"})
        assert summary is not None
        lines = summary.splitlines()
        # The file TeX was reading (the \input one, not main.tex), the line, and the source split
        # at the point of the error.
        assert lines[0] == "sections/part.tex:2: Undefined control sequence."
        assert lines[1] == "l.2 We see \\foo"
        assert lines[2].strip() == "bar baz."
        assert len(lines) == 3


def test_missing_dollar(tmp_path: Path) -> None:
    stdout, log = pdflatex(tmp_path, {"main.tex": PREAMBLE + "Hello.\nThe value x^2 is here.\n\\end{document}\n"})
    summary = summarise_latex_log(log)
    assert summary is not None
    assert summary.splitlines() == ["main.tex:4: Missing $ inserted.", "l.4 The value x^",
                                    "                2 is here."]
    assert summarise_latex_log(stdout) == summary


def test_missing_package(tmp_path: Path) -> None:
    doc = "\\documentclass{article}\n\\usepackage{nosuchpackage}\n\\begin{document}\nHi.\n\\end{document}\n"
    for file_line_error in (True, False):
        stdout, _log = pdflatex(tmp_path, {"main.tex": doc}, file_line_error=file_line_error)
        summary = summarise_latex_log(stdout, {"main.tex"})
        assert summary is not None
        lines = summary.splitlines()
        # TeX reads ahead for the file name it should try instead, so it stops on line 3.
        assert lines[0] == "main.tex:3: LaTeX Error: File `nosuchpackage.sty' not found."
        assert lines[1].startswith("l.3 \\begin")
        assert lines[-1] == "hint: nosuchpackage.sty is part of a TeX package that is not installed on this chef"


def test_missing_input_file_hints_at_undeclared_input(tmp_path: Path) -> None:
    stdout, _log = pdflatex(tmp_path, {"main.tex": PREAMBLE + "Hello.\n\\input{results}\n\\end{document}\n"})
    summary = summarise_latex_log(stdout, {"main.tex"})
    assert summary is not None
    lines = summary.splitlines()
    assert lines[0] == "main.tex:4: LaTeX Error: File `results.tex' not found."
    assert lines[1] == "l.4 \\input{results}"
    assert "results.tex is not among this step's inputs" in lines[-1]
    # Without knowing the step's files there is nothing to hint.
    assert "hint" not in (summarise_latex_log(stdout) or "")


def test_error_while_loading_an_outside_file_points_at_the_project_file(tmp_path: Path) -> None:
    outside = tmp_path / "texmf"
    outside.mkdir()
    (outside / "helper.tex").write_text("\\def\\ok{}\n\\undefinedmacro\n")
    work = tmp_path / "work"
    work.mkdir()
    stdout, _log = pdflatex(work, {"main.tex": PREAMBLE + f"Hello.\n\\input{{{outside}/helper}}\n\\end{{document}}\n"})
    summary = summarise_latex_log(stdout, {"main.tex"})
    assert summary is not None
    lines = summary.splitlines()
    assert lines[0] == "main.tex: Undefined control sequence."
    assert lines[1] == f"(in {outside}/helper.tex:2, loaded from main.tex)"
    assert lines[2] == "l.2 \\undefinedmacro"


def test_a_long_log_gives_a_short_summary(tmp_path: Path) -> None:
    # Hundreds of warnings and package banners before the one error, as in a real paper.
    body = "".join(f"See \\ref{{missing{i}}} and \\cite{{nokey{i}}}.\n" for i in range(400))
    doc = ("\\documentclass{article}\n\\usepackage{amsmath,booktabs,graphicx,hyperref}\n\\begin{document}\n"
           + body + "Finally \\textbf{bold \\oops{} here}.\n\\end{document}\n")
    stdout, log = pdflatex(tmp_path, {"main.tex": doc})
    assert len(log.splitlines()) > 1000
    for text in (stdout, log):
        summary = summarise_latex_log(text, {"main.tex"})
        assert summary is not None
        lines = summary.splitlines()
        assert lines[0] == "main.tex:404: Undefined control sequence."
        assert "\\oops" in lines[1] and len(lines) <= 4


def test_a_clean_run_has_no_error(tmp_path: Path) -> None:
    (tmp_path / "main.tex").write_text(PREAMBLE + "Fine: $x^2$, see \\ref{nowhere}.\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", *FLAGS, "-file-line-error", "main.tex"], cwd=tmp_path, capture_output=True,
                          text=True, errors="replace", timeout=60)
    assert proc.returncode == 0
    assert summarise_latex_log(proc.stdout) is None
    assert summarise_latex_log((tmp_path / "main.log").read_text(errors="replace")) is None


def test_bibtex_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "main.aux").write_text("\\relax\n\\citation{a}\n\\bibstyle{plain}\n\\bibdata{refs}\n")
    (tmp_path / "refs.bib").write_text(
        "@book{a, title={First}, author={A. Author}, publisher={P}, year=1990}\n\n"
        "@book{b, title={Second} author={B. Author}, year=1991}\n")
    proc = subprocess.run(["bibtex", "main"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2  # bibtex: an error, not a warning
    for text in (proc.stdout, (tmp_path / "main.blg").read_text()):
        summary = summarise_latex_log(text)
        assert summary is not None
        lines = summary.splitlines()
        assert lines[0] == "refs.bib:3: I was expecting a `,' or a `}'"
        assert "author={B. Author}" in lines[-1]


def test_bibtex_missing_database(tmp_path: Path) -> None:
    (tmp_path / "main.aux").write_text("\\relax\n\\citation{a}\n\\bibstyle{plain}\n\\bibdata{nowhere}\n")
    proc = subprocess.run(["bibtex", "main"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    summary = summarise_latex_log(proc.stdout)
    assert summary is not None
    assert summary.splitlines()[0] == "main.aux:4: I couldn't open database file nowhere.bib"
