"""Chef kinds and the tools whose versions make up a step's toolchain identity.

Shared knowledge: a chef advertises versions of its kinds' tools, and the MajorDomo folds the
versions of the tools a step uses into its action key.
"""

from __future__ import annotations

import functools
import shlex

# Tools a chef of each kind probes and advertises.
KIND_TOOLS: dict[str, tuple[str, ...]] = {
    "shell": ("sh", "bash", "python3", "perl", "awk", "sed", "sort", "gzip"),
    "cc": ("cc", "gcc", "g++", "c++", "clang", "ar", "ld"),
    "latex": ("pdflatex", "xelatex", "lualatex", "bibtex", "biber", "makeindex", "kpsewhich"),
}
# Tools every step of a kind depends on, whatever its command.
KIND_BASE_TOOLS: dict[str, tuple[str, ...]] = {"shell": ("sh",), "cc": ("sh",), "latex": ("sh",)}
KNOWN_KINDS = tuple(KIND_TOOLS)


def command_tool(command: str) -> str | None:
    """The program a command starts with, when it is a plain name (`gcc -c ...` -> `gcc`)."""
    head = command.split(None, 1)[0] if command.strip() else ""
    if head and not any(c in head for c in "'\"\\=$`"):
        return head if "/" not in head and head.replace("-", "").replace("+", "").replace(".", "").isalnum() else None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and "=" in words[0] and not words[0].startswith("="):
        words = words[1:]  # leading VAR=value assignments
    if not words or "/" in words[0] or not words[0].replace("-", "").replace("+", "").replace(".", "").isalnum():
        return None
    return words[0]


def step_tools(kind: str, command: str, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Sorted tool names whose identities belong in a step's action key."""
    return _step_tools(kind, command, tuple(extra))


@functools.lru_cache(maxsize=1 << 16)  # a resident build server asks again for the same steps every build
def _step_tools(kind: str, command: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    tools = set(KIND_BASE_TOOLS.get(kind, ("sh",))) | set(extra)
    first = command_tool(command)
    if first and first in KIND_TOOLS.get(kind, ()):
        tools.add(first)
    return tuple(sorted(tools))
