"""The fields of a [[rule]] or [[step]] table: names, types and defaults, checked before any expansion."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

# field -> what it must be, for error messages
FIELDS: dict[str, str] = {
    "name": "a string",
    "kind": "a string",
    "description": "a string",
    "inputs": "a list of strings",
    "outputs": "a list of strings",
    "exclude": "a list of strings",
    "depfile": "a string",
    "command": "a string",
    "env": "a table of strings",
    "tools": "a list of strings",
    "normalise": "a table of normaliser names or {regex = ...}",
    "max_passes": "an integer >= 1",
    "timeout": "a number of seconds > 0",
    "recorder": "true or false",
    "keep": "true or false",
    "may_read": "a list of strings",
}

# Words people bring from make, ninja, bazel and friends.
_ALIASES = {
    "target": "outputs",
    "targets": "outputs",
    "output": "outputs",
    "outs": "outputs",
    "input": "inputs",
    "deps": "inputs",
    "dependencies": "inputs",
    "prerequisites": "inputs",
    "sources": "inputs",
    "srcs": "inputs",
    "cmd": "command",
    "commands": "command",
    "recipe": "command",
    "run": "command",
    "environment": "env",
    "normalize": "normalise",
    "passes": "max_passes",
    "timeout_s": "timeout",
}

DEFAULT_KIND = "shell"
DEFAULT_MAX_PASSES = 5
DEFAULT_TIMEOUT_S = 3600.0  # the wire default of StepRequest.timeout_s

_KIND_RE = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NORMALISER_RE = re.compile(r"[A-Za-z0-9_.-]+")

Fail = Callable[[str | None, str], NoReturn]


@dataclass(slots=True)
class RecipeSpec:
    """One recipe as written, validated for shape; paths and commands are not yet expanded."""

    table: str  # "rule" or "step"
    index: int  # position within its table's array
    line: int
    name: str
    kind: str
    description: str
    inputs: list[str]
    outputs: list[str]
    exclude: list[str]
    depfile: str
    command: str
    env: dict[str, str]
    tools: list[str]
    normalise: list[tuple[str, str]]  # (output glob, "name" or "regex:<pattern>")
    max_passes: int
    timeout_s: float
    recorder: bool
    keep: bool
    may_read: list[str] = dataclasses.field(default_factory=list)  # in the task dir; in the key only once read


def suggest_field(field: str) -> str:
    """` (did you mean 'outputs'?)` for a misspelt or borrowed field name, else ``."""
    if field in _ALIASES:
        return f" (did you mean '{_ALIASES[field]}'?)"
    close = difflib.get_close_matches(field, FIELDS, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(value: object) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def _wrong(fail: Fail, field: str, value: object) -> NoReturn:
    fail(field, f"'{field}' must be {FIELDS[field]}, not {_type_name(value)}")


def _string(table: Mapping[str, Any], field: str, fail: Fail, default: str = "") -> str:
    value = table.get(field, default)
    if not isinstance(value, str):
        _wrong(fail, field, value)
    return value


def _strings(table: Mapping[str, Any], field: str, fail: Fail) -> list[str]:
    value = table.get(field, [])
    if isinstance(value, str):  # a lone string is the commonest slip: say so precisely
        fail(field, f"'{field}' must be a list of strings: write {field} = [\"{value}\"]")
    if not isinstance(value, list):
        _wrong(fail, field, value)
    for item in value:
        if not isinstance(item, str):
            fail(field, f"'{field}' must be a list of strings; it holds {item!r}, {_type_name(item)}")
    if any(v == "" for v in value):
        fail(field, f"'{field}' contains an empty string")
    return value


def _bool(table: Mapping[str, Any], field: str, fail: Fail) -> bool:
    value = table.get(field, False)
    if not isinstance(value, bool):
        _wrong(fail, field, value)
    return value


def _env(table: Mapping[str, Any], fail: Fail) -> dict[str, str]:
    value = table.get("env", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        _wrong(fail, "env", value)
    for key in value:
        if not _ENV_NAME_RE.fullmatch(key):
            fail("env", f"bad environment variable name {key!r}")
    return value


def _normaliser(glob: str, spec: object, fail: Fail) -> str:
    if isinstance(spec, str) and _NORMALISER_RE.fullmatch(spec):
        return spec
    if isinstance(spec, dict) and set(spec) == {"regex"} and isinstance(spec["regex"], str):
        try:
            re.compile(spec["regex"])
        except re.error as exc:
            fail("normalise", f"normalise[{glob!r}]: bad regex: {exc}")
        return "regex:" + spec["regex"]
    fail("normalise", f'normalise[{glob!r}] must be a normaliser name or {{regex = "..."}}')


def _normalise(table: Mapping[str, Any], fail: Fail) -> list[tuple[str, str]]:
    value = table.get("normalise", {})
    if not isinstance(value, dict):
        _wrong(fail, "normalise", value)
    return [(glob, _normaliser(glob, spec, fail)) for glob, spec in value.items()]


def _max_passes(table: Mapping[str, Any], fail: Fail) -> int:
    value = table.get("max_passes", DEFAULT_MAX_PASSES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail("max_passes", f"'max_passes' must be an integer >= 1, not {value!r}")
    return value


def _timeout(table: Mapping[str, Any], fail: Fail) -> float:
    value = table.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        fail("timeout", f"'timeout' must be a number of seconds > 0, not {value!r}")
    return float(value)


def _name(table: Mapping[str, Any], kind: str, fail: Fail) -> str:
    """The recipe's name; by default its first output, as a make target is named by its file."""
    outputs = table.get("outputs")
    default = outputs[0] if isinstance(outputs, list) and outputs and isinstance(outputs[0], str) else ""
    name = _string(table, "name", fail, default)
    if not name:
        fail("name" if "name" in table else None, f"a [[{kind}]] needs a name or at least one output")
    if "[" in name or "]" in name or "\n" in name:
        fail("name", f"recipe name {name!r} may not contain '[', ']' or a newline")
    return name


def read_recipe(table: Mapping[str, Any], kind: str, index: int, line: int, fail: Fail) -> RecipeSpec:
    """Check one recipe table's fields and types; `fail(field, message)` raises with the right line."""
    for field in table:
        if field not in FIELDS:
            fail(field, f"unknown field '{field}'{suggest_field(field)}")
    name = _name(table, kind, fail)
    command = _string(table, "command", fail)
    if "command" not in table or not command.strip():
        fail("command" if "command" in table else None, "no command: every recipe needs 'command'")
    outputs = _strings(table, "outputs", fail)
    if not outputs:
        fail("outputs" if "outputs" in table else None, "no outputs: every recipe must declare what it makes")
    kind_name = _string(table, "kind", fail, DEFAULT_KIND)
    if not _KIND_RE.fullmatch(kind_name):
        fail("kind", f"bad chef kind {kind_name!r}: use letters, digits, '_', '.' and '-'")
    return RecipeSpec(
        table=kind,
        index=index,
        line=line,
        name=name,
        kind=kind_name,
        description=_string(table, "description", fail),
        inputs=_strings(table, "inputs", fail),
        outputs=outputs,
        exclude=_strings(table, "exclude", fail),
        depfile=_string(table, "depfile", fail),
        command=command,
        env=_env(table, fail),
        tools=_strings(table, "tools", fail),
        normalise=_normalise(table, fail),
        max_passes=_max_passes(table, fail),
        timeout_s=_timeout(table, fail),
        recorder=_bool(table, "recorder", fail),
        keep=_bool(table, "keep", fail),
        may_read=_strings(table, "may_read", fail),
    )
