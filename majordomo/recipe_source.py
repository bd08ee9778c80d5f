"""The recipe file as text: reading, TOML parsing, and the line numbers tomllib does not keep.

Every error a user sees names `<file>:<line>`, so the loader needs lines for tables, recipes and
fields. tomllib reports lines only for syntax errors; this module recovers the rest with a small
line scanner that knows TOML strings, comments and brackets well enough to ignore `[[rule]]`
written inside a multi-line string or a multi-line array.

Limit: recipes written as inline arrays (`rule = [{...}, {...}]`) have no headers, so their errors
point at the `rule =` line rather than at the recipe.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RecipeError(Exception):
    """A mistake in the recipe file. `str()` is one line: `<file>:<line>: recipe '<name>': <what>`."""

    def __init__(
        self,
        file: str,
        line: int | None,
        message: str,
        *,
        recipe: str | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.recipe = recipe
        # One line, always: a message quoting user text must not break a terminal or an editor's parser.
        self.message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        who = f" recipe {self.recipe!r}:" if self.recipe is not None else ""
        return f"{where}:{who} {self.message}"


_TOML_AT_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)$")


def read_text(path: Path, display: str) -> str:
    """The file's text; a missing file or bad UTF-8 is a RecipeError, not a traceback."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(display, None, "no recipe file here (write one: see docs/recipes.md)") from None
    except OSError as exc:
        raise RecipeError(display, None, f"cannot read the recipe file: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(display, line, "the recipe file is not valid UTF-8") from None


def parse_toml(text: str, display: str) -> dict[str, Any]:
    """Parse with tomllib, keeping the line and column of a syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line: int | None = None
        column: int | None = None
        if match := _TOML_AT_RE.search(message):
            line, column = int(match.group(1)), int(match.group(2))
            message = message[: match.start()]
        elif match := _TOML_END_RE.search(message):
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
            message = message[: match.start()] + " at the end of the file"
        raise RecipeError(display, line, f"TOML syntax error: {message}", column=column) from None


_ARRAY_HEADER_RE = re.compile(r"\s*\[\[\s*([^\[\]]+?)\s*\]\]")
_TABLE_HEADER_RE = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]")
_KEY_RE = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"([^"\\]*)"|'([^']*)')\s*[.=]""")


@dataclass(frozen=True, slots=True)
class _Header:
    line: int
    name: str  # dotted, quotes stripped: "rule", "rule.env", "vars"
    array: bool


def _clean_name(raw: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in raw.split("."))


def _find_close(line: str, start: int, delim: str) -> int:
    """Index just past the closing `delim` from `start`, or -1; backslash escapes count in "-strings."""
    i = start
    while True:
        j = line.find(delim, i)
        if j < 0:
            return -1
        if delim[0] == '"':
            backslashes = 0
            k = j - 1
            while k >= start and line[k] == "\\":
                backslashes += 1
                k -= 1
            if backslashes % 2:
                i = j + 1
                continue
        return j + len(delim)


class SourceMap:
    """Lines of headers and keys in a TOML text, found by scanning it once."""

    def __init__(self, text: str) -> None:
        self.headers: list[_Header] = []
        # (line, index into headers of the enclosing header or -1, first segment of the key)
        self.keys: list[tuple[int, int, str]] = []
        self._scan(text)

    def _scan(self, text: str) -> None:
        open_string = ""  # the delimiter of a multi-line string still open at the end of a line
        depth = 0  # open [ and { of values (multi-line arrays)
        for number, line in enumerate(text.split("\n"), start=1):
            pos = 0
            if open_string:
                pos = _find_close(line, 0, open_string)
                if pos < 0:
                    continue
                open_string = ""
            elif depth == 0:
                pos = self._header_or_key(number, line)
            open_string, depth = self._scan_value(line, pos, depth)

    def _header_or_key(self, number: int, line: str) -> int:
        for regex, array in ((_ARRAY_HEADER_RE, True), (_TABLE_HEADER_RE, False)):
            if match := regex.match(line):
                self.headers.append(_Header(number, _clean_name(match.group(1)), array))
                return match.end()
        if match := _KEY_RE.match(line):
            key = match.group(1) or match.group(2) or match.group(3) or ""
            self.keys.append((number, len(self.headers) - 1, key))
            return match.end()
        return 0

    @staticmethod
    def _scan_value(line: str, pos: int, depth: int) -> tuple[str, int]:
        """Follow strings, comments and brackets to the end of the line; return (open delimiter, depth)."""
        i = pos
        n = len(line)
        while i < n:
            c = line[i]
            if c == "#":
                break
            if c in "\"'":
                delim = c * 3 if line.startswith(c * 3, i) else c
                close = _find_close(line, i + len(delim), delim)
                if close < 0:
                    return (delim if len(delim) == 3 else ""), depth
                i = close
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth = max(0, depth - 1)
            i += 1
        return "", depth

    def array_lines(self, name: str) -> list[int]:
        """Lines of every `[[name]]` header, in order."""
        return [h.line for h in self.headers if h.array and h.name == name]

    def table_line(self, name: str) -> int:
        """The first line that opens or assigns the top-level `name`; 1 when not found."""
        for header in self.headers:
            if header.name == name or header.name.startswith(name + "."):
                return header.line
        for line, header_index, key in self.keys:
            if header_index == -1 and key == name:
                return line
        return 1

    def key_line(self, table: str, key: str) -> int | None:
        """The line of `key = ...` inside `[table]`, or of a `[table.key]` sub-table header."""
        for index, header in enumerate(self.headers):
            if header.name == f"{table}.{key}":
                return header.line
            if header.name == table and not header.array:
                for line, header_index, name in self.keys:
                    if header_index == index and name == key:
                        return line
        return None

    def field_line(self, array: str, occurrence: int, field: str) -> int | None:
        """The line of `field` inside the `occurrence`-th `[[array]]` (its sub-tables included)."""
        starts = [i for i, h in enumerate(self.headers) if h.array and h.name == array]
        if occurrence >= len(starts):
            return None
        start = starts[occurrence]
        end = start + 1
        while end < len(self.headers) and self.headers[end].name.startswith(array + "."):
            if self.headers[end].name.split(".")[1] == field:
                return self.headers[end].line
            end += 1
        for line, header_index, key in self.keys:
            if header_index == start and key == field:
                return line
        return None
