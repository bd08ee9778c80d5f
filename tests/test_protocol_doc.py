"""docs/protocol.md agrees with protocol/: every message, field, type, default, subject, code and event kind.

Run as a script to print the message tables as the code has them (paste, then write the meanings).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path

import msgspec

import protocol.messages
import protocol.subjects
from protocol import PROTOCOL_VERSION
from protocol.errors import ErrorCode
from protocol.kinds import KIND_TOOLS

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "protocol.md"


def structs() -> dict[str, type[msgspec.Struct]]:
    return {name: obj for name, obj in vars(protocol.messages).items()
            if inspect.isclass(obj) and issubclass(obj, msgspec.Struct) and obj.__module__ == protocol.messages.__name__}


def type_name(t: object) -> str:
    origin = typing.get_origin(t)
    if origin is None:
        return "None" if t is type(None) else getattr(t, "__name__", str(t))
    if origin in (types.UnionType, typing.Union):  # written `A | None`; in the doc's tables `A \| None`
        return " | ".join(type_name(a) for a in typing.get_args(t))
    return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(t))}]"


def default_text(field: msgspec.structs.FieldInfo) -> str:
    if field.default_factory is not msgspec.NODEFAULT:
        return "[]" if field.default_factory is list else "{}" if field.default_factory is dict else "?"
    if field.default is msgspec.NODEFAULT:
        return "required"
    return msgspec.json.encode(field.default).decode()


def expected_rows(struct: type[msgspec.Struct]) -> dict[str, tuple[str, str]]:
    return {f.name: (type_name(f.type), default_text(f)) for f in msgspec.structs.fields(struct)}


def documented_rows(doc: str, name: str) -> dict[str, tuple[str, str]] | None:
    match = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^##)", doc, re.S | re.M)
    if not match:
        return None
    rows: dict[str, tuple[str, str]] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2].strip("`"))
    return rows


def published_event_kinds() -> set[str]:
    """Event kinds the code publishes: string literals like "step.done" in the publishers' sources."""
    kinds: set[str] = set()
    for path in [*REPO.glob("chefs/*.py"), *REPO.glob("majordomo/*.py")]:
        text = path.read_text()
        for call in re.finditer(r"_publish\((.{0,120})", text):
            kinds |= set(re.findall(r"\"((?:build|step|chef|artefact|lease)\.[a-z_]+)\"", call.group(1)))
    return kinds


def test_every_message_and_field_is_documented_with_its_type_and_default() -> None:
    doc = DOC.read_text()
    problems: list[str] = []
    for name, struct in structs().items():
        rows = documented_rows(doc, name)
        if rows is None:
            problems.append(f"message {name} has no '### {name}' section")
            continue
        want = expected_rows(struct)
        for field, (typ, default) in want.items():
            if field not in rows:
                problems.append(f"{name}.{field} is not documented (| `{field}` | `{typ}` | {default} | ... |)")
            elif rows[field] != (typ, default):
                problems.append(f"{name}.{field}: doc says {rows[field]}, code has {(typ, default)}")
        problems += [f"{name}.{stale} is documented but not in the code" for stale in rows.keys() - want.keys()]
        tag = struct.__struct_config__.tag
        if tag and f'Tag `"{tag}"`' not in doc:
            problems.append(f"{name}'s tag {tag!r} is not documented")
    documented = set(re.findall(r"^### (\w+)$", doc, re.M))
    problems += [f"'### {stale}' documents no message of protocol.messages" for stale in documented - structs().keys()]
    assert not problems, "docs/protocol.md is out of date:\n" + "\n".join(problems)


def test_every_subject_function_and_constant_is_documented() -> None:
    doc = DOC.read_text()
    functions = [n for n, o in vars(protocol.subjects).items()
                 if inspect.isfunction(o) and o.__module__ == protocol.subjects.__name__ and not n.startswith("_")]
    assert functions, "protocol.subjects has no functions?"
    for name in functions:
        params = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}".replace("'", '"')
            for p in inspect.signature(getattr(protocol.subjects, name)).parameters.values())
        assert f"`{name}({params})`" in doc, f"protocol.subjects.{name}({params}) is not documented"
    # Subject shapes as the functions build them.
    for shape in (protocol.subjects.chef_run("<fed>", "<id>"), protocol.subjects.chef_pull("<fed>", "<id>"),
                  protocol.subjects.events("<fed>", "<kind>"), protocol.subjects.chefs_bucket("<fed>"),
                  protocol.subjects.owners_bucket("<fed>"), protocol.subjects.actions_bucket("<fed>")):
        assert f"`{shape}`" in doc or f"`KV {shape}`" in doc, f"subject {shape} is not documented"
    for constant in (protocol.subjects.CHEF_SERVICE_NAME, protocol.subjects.MAJORDOMO_SERVICE_NAME,
                     protocol.subjects.DEFAULT_FEDERATION, protocol.messages.VERSION_HEADER):
        assert f"`{constant}" in doc, f"{constant} is not documented"
    assert f"`{protocol.messages.VERSION_HEADER}: {PROTOCOL_VERSION}`" in doc


def test_every_error_code_kind_and_event_kind_is_documented() -> None:
    doc = DOC.read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` |" in doc, f"error code {code.value} is not documented"
    for kind, tools in KIND_TOOLS.items():
        assert f"| `{kind}` | {', '.join(f'`{t}`' for t in tools)} |" in doc, f"kind {kind}'s tools are not documented"
    kinds = published_event_kinds()
    assert {"step.running", "step.done", "step.failed", "chef.joined"} <= kinds, kinds  # the scan still works
    missing = [k for k in sorted(kinds) if f"| `{k}` |" not in doc]
    assert not missing, f"event kinds published but not documented in docs/protocol.md: {missing}"


if __name__ == "__main__":
    for name, struct in structs().items():
        tag = struct.__struct_config__.tag
        print(f"### {name}\n" + (f'\nTag `"{tag}"`.\n' if tag else "") +
              "\n| field | type | default | meaning |\n| --- | --- | --- | --- |")
        for field, (typ, default) in expected_rows(struct).items():
            shown = default if default == "required" else f"`{default}`"
            print(f"| `{field}` | `{typ.replace('|', chr(92) + '|')}` | {shown} |  |")
        print()
    sys.exit(0)
