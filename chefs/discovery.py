"""Read what a step discovered it depends on: Makefile-syntax depfiles and LaTeX .fls files."""

from __future__ import annotations

import os
from pathlib import Path


def parse_depfile(text: str) -> list[str]:
    """Prerequisites from a Makefile-syntax depfile (`gcc -MD`): `target: dep dep \\` lines.

    Handles backslash-newline continuations, `\\ ` escaped spaces, `$$`, several rules, and
    `-MP` phony targets (which repeat headers as targets with no prerequisites).
    """
    deps: list[str] = []
    text = text.replace("\\\r\n", " ").replace("\\\n", " ")
    for line in text.splitlines():
        if ":" not in line:
            continue
        # The target ends at the first ': ' (or ':' at end); a Windows drive 'C:' never appears here.
        idx = line.find(": ")
        if idx < 0 and line.rstrip().endswith(":"):
            continue
        rest = line[idx + 1:] if idx >= 0 else line.split(":", 1)[1]
        deps.extend(_split_escaped(rest))
    return deps


def _split_escaped(text: str) -> list[str]:
    words: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in " #\\":
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == "$" and text[i + 1:i + 2] == "$":
            cur.append("$")
            i += 2
            continue
        if ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
        i += 1
    if cur:
        words.append("".join(cur))
    return words


def parse_fls(text: str) -> list[str]:
    """Files a LaTeX run read, from its `-recorder` .fls file (`INPUT <path>` lines)."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.startswith("INPUT "):
            seen.setdefault(line[6:].strip(), None)
    return list(seen)


def project_relative(paths: list[str], task_dir: Path) -> list[str]:
    """Keep the paths inside the task dir, as project-relative paths; drop system files."""
    root = os.path.realpath(task_dir)
    out: dict[str, None] = {}
    for p in paths:
        full = p if os.path.isabs(p) else os.path.join(root, p)
        full = os.path.normpath(full)
        if full == root or not full.startswith(root + os.sep):
            continue  # /usr/include/stdio.h and friends belong to the toolchain identity
        out.setdefault(os.path.relpath(full, root).replace(os.sep, "/"), None)
    return list(out)
