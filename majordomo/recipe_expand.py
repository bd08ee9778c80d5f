"""Variables in recipes: `$VAR`, `${VAR}`, `$(VAR)`, automatic variables, and `$$`.

[vars] are resolved once, up front (they may use each other; a cycle is an error). A command is
then compiled once per recipe into a template of literal text and automatic variables, and each
step renders the template with its own paths, shell-quoted. This keeps a 10,000-step pattern rule
to one string formatting per step.

Variable values are inserted as written (so `CFLAGS = "-O2 -Wall"` splits into two words, as in
make); automatic variables name paths and are quoted with `shlex.quote`.
"""

from __future__ import annotations

import difflib
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Automatic variables: the single-character ones from make, ninja's $in/$out, and $depfile.
AUTOMATIC = frozenset({"@", "<", "^", "*", "in", "out", "depfile", "@D", "@F", "<D", "<F"})
RESERVED_NAMES = frozenset({"in", "out", "depfile"})

_REF_RE = re.compile(
    r"\$(?:"
    r"(?P<dollar>\$)"
    r"|\{(?P<brace>[^{}$]*)\}"
    r"|\((?P<paren>[^()$]*)\)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<auto>[@<^*])"
    r"|(?P<stray>)"
    r")"
)


class ExpansionError(ValueError):
    """A variable reference that cannot be expanded; `variable` names the [vars] entry at fault."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Auto:
    """An automatic variable left in a template, filled in per step."""

    name: str


@dataclass(frozen=True, slots=True)
class _Ref:
    """A reference to a [vars] entry, before resolution."""

    name: str


Part = str | Auto
Template = tuple[Part, ...]


def _reference(match: re.Match[str], text: str) -> str | Auto | _Ref:
    """What one `$...` stands for: literal text, an automatic variable or a [vars] reference."""
    if match.group("dollar"):
        return "$"
    if match.group("stray") is not None:
        shown = text[match.start() : match.start() + 2]
        raise ExpansionError(f"stray {shown!r}: write '$$' for a literal '$' (a shell variable is '$$NAME')")
    name = match.group("brace")
    if name is None:
        name = match.group("paren")
    if name is None:
        name = match.group("name") or match.group("auto")
    if name in AUTOMATIC:
        return Auto(name)
    if VAR_NAME_RE.fullmatch(name):
        return _Ref(name)
    raise ExpansionError(f"{match.group(0)!r} is not a variable reference")


def _parse(text: str) -> list[str | Auto | _Ref]:
    parts: list[str | Auto | _Ref] = []
    pos = 0
    for match in _REF_RE.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(_reference(match, text))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _merge(parts: Sequence[Part]) -> Template:
    """Join neighbouring literals so rendering does the least work."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return tuple(merged)


def _unknown(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '${close[0]}'?)" if close else ""
    return f"unknown variable '${name}'{hint}; a shell variable is written '$${name}'"


class Variables:
    """The [vars] table plus overrides, each resolved to a template of text and automatic variables."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        for name in raw:
            if not VAR_NAME_RE.fullmatch(name):
                raise ExpansionError(f"bad variable name {name!r}: use letters, digits and _", name)
            if name in RESERVED_NAMES:
                raise ExpansionError(f"'{name}' is an automatic variable and cannot be set", name)
        self._raw = dict(raw)
        self._resolved: dict[str, Template] = {}
        for name in self._raw:
            self._resolve(name, [])

    def _resolve(self, name: str, chain: list[str]) -> Template:
        if name in self._resolved:
            return self._resolved[name]
        if name in chain:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            raise ExpansionError(f"variable cycle: {cycle}", chain[0])
        chain.append(name)
        try:
            parts = _parse(self._raw[name])
        except ExpansionError as exc:
            raise ExpansionError(f"in variable '{name}': {exc}", name) from None
        out: list[Part] = []
        for part in parts:
            if not isinstance(part, _Ref):
                out.append(part)
            elif part.name in self._raw:
                out.extend(self._resolve(part.name, chain))
            else:
                raise ExpansionError(f"in variable '{name}': {_unknown(part.name, list(self._raw))}", name)
        chain.pop()
        template = _merge(out)
        self._resolved[name] = template
        return template

    def template(self, text: str) -> Template:
        """Compile text with [vars] substituted and automatic variables kept for rendering."""
        out: list[Part] = []
        for part in _parse(text):
            if not isinstance(part, _Ref):
                out.append(part)
            elif part.name in self._resolved:
                out.extend(self._resolved[part.name])
            else:
                raise ExpansionError(_unknown(part.name, list(self._resolved)))
        return _merge(out)

    def text(self, text: str) -> str:
        """Expand [vars] only, for paths and environment values where automatic variables mean nothing."""
        if "$" not in text:
            return text
        out: list[str] = []
        for part in self.template(text):
            if isinstance(part, Auto):
                raise ExpansionError(f"automatic variable '${part.name}' cannot be used here, only in command")
            out.append(part)
        return "".join(out)


_quote = shlex.quote
Paths = Sequence[str]


def _first_input(inputs: Paths, name: str) -> str:
    if not inputs:
        raise ExpansionError(f"'${name}' is used but the step has no inputs (its globs matched nothing)")
    return inputs[0]


def _stem(stem: str | None) -> str:
    if stem is None:
        raise ExpansionError("'$*' (the stem) is only defined in a [[rule]]")
    return _quote(stem)


def _depfile(depfile: str) -> str:
    if not depfile:
        raise ExpansionError("'$depfile' is used but the recipe declares no depfile")
    return _quote(depfile)


def _dir(path: str) -> str:
    return _quote(posixpath.dirname(path) or ".")


# name -> f(inputs, outputs, stem, depfile); a table rather than branches, as it runs per step.
_AUTOMATIC_RENDER: dict[str, Callable[[Paths, Paths, str | None, str], str]] = {
    "@": lambda i, o, s, d: _quote(o[0]),
    "@D": lambda i, o, s, d: _dir(o[0]),
    "@F": lambda i, o, s, d: _quote(posixpath.basename(o[0])),
    "<": lambda i, o, s, d: _quote(_first_input(i, "<")),
    "<D": lambda i, o, s, d: _dir(_first_input(i, "<D")),
    "<F": lambda i, o, s, d: _quote(posixpath.basename(_first_input(i, "<F"))),
    "^": lambda i, o, s, d: " ".join(map(_quote, i)),
    "in": lambda i, o, s, d: " ".join(map(_quote, i)),
    "out": lambda i, o, s, d: " ".join(map(_quote, o)),
    "*": lambda i, o, s, d: _stem(s),
    "depfile": lambda i, o, s, d: _depfile(d),
}
assert set(_AUTOMATIC_RENDER) == AUTOMATIC


class Renderer:
    """A template compiled to a %-format string and one function per automatic variable.

    Rendering then costs one formatting operation per step, which matters for a pattern rule
    with 10,000 stems.
    """

    __slots__ = ("_fill", "_format")

    def __init__(self, template: Template) -> None:
        pieces: list[str] = []
        fill: list[Callable[[Paths, Paths, str | None, str], str]] = []
        for part in template:
            if isinstance(part, str):
                pieces.append(part.replace("%", "%%"))
            else:
                pieces.append("%s")
                fill.append(_AUTOMATIC_RENDER[part.name])
        self._format = "".join(pieces)
        self._fill = tuple(fill)

    def __call__(self, inputs: Paths, outputs: Paths, stem: str | None, depfile: str) -> str:
        if not self._fill:
            return self._format % ()
        return self._format % tuple([f(inputs, outputs, stem, depfile) for f in self._fill])
