"""The first error of a TeX or BibTeX run, in a few lines instead of the whole log.

A failed pdflatex run leaves hundreds of lines of package banners, font paths and warnings; what
a person needs is the error message, the source file and line it points to, and the line of
source around the point where TeX stopped. This module finds those in either the `.log` file or
the terminal output (they carry the same error block), in both of TeX's styles:

    ./paper.tex:42: Undefined control sequence.      (-file-line-error)
    ! Undefined control sequence.                    (classic; the file comes from the
    l.42 See \\foo                                     "(./paper.tex" nesting in the log)
                 bar

and BibTeX's `I was expecting a ... ---line 12 of file refs.bib`. The result reads like a
compiler error:

    paper.tex:42: Undefined control sequence.
    l.42 See \\foo
                 bar
"""

from __future__ import annotations

import re

from chefs.sandbox import SANDBOX_ROOT

MAX_PRINT_LINE = 79  # TeX Live breaks log lines at this width (texmf.cnf max_print_line)
_SCAN_AHEAD = 40  # lines after the error header to look for its `l.N` context
_MESSAGE_LINES = 3  # continuation lines of a long message (package errors) kept at most

# `./paper.tex:42: Undefined control sequence.`; the file has an extension, no spaces.
_FILE_LINE = re.compile(r"^(?P<file>(?:\.{1,2}/|/)?[^\s:()]+\.[A-Za-z0-9]+):(?P<line>\d+): (?P<msg>.*)$")
_BANG = re.compile(r"^! (?P<msg>.*)$")
_CONTEXT = re.compile(r"^l\.(?P<line>\d+) ")
_FATAL = "==> Fatal error occurred"
_BIBTEX = re.compile(r"^(?P<msg>.*?)---line (?P<line>\d+) of file (?P<file>\S+)\s*$")
_MISSING_FILE = re.compile(r"File `(?P<name>[^']+)' not found|I can't find file `(?P<name2>[^']+)'")
_PACKAGE_EXT = (".sty", ".cls", ".def", ".fd", ".cfg", ".clo", ".bst", ".ldf")
_OPEN_CLOSE = re.compile(r"\((?P<file>[^\s(){}<>\[\]]*)|\)")


def summarise_latex_log(log_text: str, project_files: set[str] | None = None) -> str | None:
    """The first error in a TeX/BibTeX log or terminal output, or None if it holds no error.

    `project_files`, when given, are the project-relative paths the step had in its task dir:
    a "file not found" for a file not among them gets a hint, because the sandbox shows a step
    only its declared inputs. (Project files are told from TeX's own by their relative paths.)"""
    lines = log_text.splitlines()
    for start, end, line in _logical_lines(lines):
        if _FATAL in line:
            continue  # the epilogue of an error already seen, never the first one
        bib = _BIBTEX.match(line)
        if bib:
            return _bibtex_error(lines, start, end, bib)
        fl = _FILE_LINE.match(line)
        bang = _BANG.match(line) if not fl else None
        if fl or bang:
            return _tex_error(lines, start, end, fl, bang, project_files)
    return None


def _logical_lines(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first, last physical index, text) with the lines TeX broke at MAX_PRINT_LINE rejoined,
    so that `/a/long/path/file.sty:12: message` matches even when it was broken after `.sty`."""
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines):
        start, parts = i, [lines[i]]
        while len(lines[i]) == MAX_PRINT_LINE and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        out.append((start, i, "".join(parts)))
        i += 1
    return out


def _tex_error(lines: list[str], start: int, i: int, fl: re.Match[str] | None, bang: re.Match[str] | None,
               project_files: set[str] | None) -> str:
    header = fl or bang
    assert header is not None
    message = [header.group("msg").strip()]
    # Package errors continue on lines like "(hyperref)   ..."; stop at context or help text.
    for extra in lines[i + 1:i + 1 + _MESSAGE_LINES]:
        if not extra.strip() or _is_context(extra) or extra.startswith(("Type ", "See the ", "! ")):
            break
        if _FILE_LINE.match(extra):
            break
        message.append(extra.strip())
    file, line_no = (fl.group("file"), fl.group("line")) if fl else (None, None)
    context: list[str] = []
    for j in range(i + 1, min(len(lines), i + 1 + _SCAN_AHEAD)):
        later = lines[j]
        if file is None:
            # Classic style: a later `file:line:` line of the same error (`Emergency stop`) names the file.
            located = _FILE_LINE.match(later)
            if located and located.group("line"):
                file = located.group("file")
        m = _CONTEXT.match(later)
        if m:
            line_no = line_no or m.group("line")
            context = [later.rstrip()]
            if j + 1 < len(lines) and lines[j + 1].strip():
                context.append(lines[j + 1].rstrip())  # the rest of the line, after the error point
            break
        if _BANG.match(later) and not later.startswith("! Emergency stop"):
            break  # the next error: this one has no line context (e.g. at the end of the job)
    stack = _open_files(lines[:start])
    if file is None and stack:
        file = stack[-1]
    where = _clean(file) if file else None
    note = ""
    if where and where.startswith("/"):
        # An error while loading a package: point at the project file that loaded it.
        inner = next((_clean(f) for f in reversed(stack) if not _clean(f).startswith("/")), None)
        if inner:
            note = f"(in {where}{':' + line_no if line_no else ''}, loaded from {inner})"
            where, line_no = inner, None  # the line number belongs to the package file
    text = " ".join(message)
    head = f"{where}:{line_no}: {text}" if where and line_no else f"{where}: {text}" if where else text
    out = [head, *([note] if note else []), *context]
    hint = _missing_file_hint(text, project_files)
    if hint:
        out.append(hint)
    return "\n".join(out)


def _bibtex_error(lines: list[str], start: int, i: int, m: re.Match[str]) -> str:
    message = m.group("msg").strip()
    if not message and start > 0:
        message = lines[start - 1].strip()  # `I couldn't open database file x.bib` / `---line 3 of file a.aux`
    out = [f"{_clean(m.group('file'))}:{m.group('line')}: {message}"]
    out += [ln.rstrip() for ln in lines[i + 1:i + 3] if ln.startswith(" : ")]
    return "\n".join(out)


def _is_context(line: str) -> bool:
    return bool(_CONTEXT.match(line)) or line.startswith(("<inserted text>", "<to be read again>", "<argument>",
                                                           "<recently read>", "<read ", "<*>"))


def _open_files(lines: list[str]) -> list[str]:
    """Files still open at the end of `lines`, outermost first: TeX logs `(file` on opening a
    file and `)` on closing it. Parentheses in messages are balanced and never look like files."""
    text = _unwrap(lines)
    stack: list[str | None] = []
    for m in _OPEN_CLOSE.finditer(text):
        if m.group(0) == ")":
            if stack:
                stack.pop()
        else:
            name = m.group("file")
            stack.append(name if _looks_like_file(name) else None)
    return [f for f in stack if f]


def _unwrap(lines: list[str]) -> str:
    """Rejoin lines TeX broke at MAX_PRINT_LINE, so a long path reads as one word."""
    parts: list[str] = []
    for line in lines:
        parts.append(line)
        parts.append("" if len(line) == MAX_PRINT_LINE else "\n")
    return "".join(parts)


def _looks_like_file(name: str) -> bool:
    return bool(re.fullmatch(r"(?:\.{1,2}/|/)?[\w./+-]*\w\.[A-Za-z0-9]+", name))


def _clean(path: str) -> str:
    """Project-relative: drop TeX's `./` and the sandbox's mount point."""
    if path.startswith(SANDBOX_ROOT + "/"):
        path = path[len(SANDBOX_ROOT) + 1:]
    while path.startswith("./"):
        path = path[2:]
    return path


def _missing_file_hint(message: str, project_files: set[str] | None) -> str | None:
    m = _MISSING_FILE.search(message)
    if not m:
        return None
    name = m.group("name") or m.group("name2")
    if name.endswith(_PACKAGE_EXT):
        return f"hint: {name} is part of a TeX package that is not installed on this chef"
    if project_files is None:
        return None
    candidates = {name, f"{name}.tex"}
    if candidates & project_files:
        return None
    return (f"hint: {name} is not among this step's inputs; a step sees only the files its recipe "
            "declares, so add it to `inputs`")
