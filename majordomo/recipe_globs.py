"""Globs and `%` patterns over the project's paths, answered from one sorted list.

`*`, `?` and `[...]` stay inside one path segment; `**` as a whole segment spans zero or more
segments. Each glob compiles once to a regex and is matched only against the paths that share its
literal prefix, found by bisection, so a glob over 10,000 files costs one pass over its own
directory, not over the project.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from functools import lru_cache

_GLOB_CHARS_RE = re.compile(r"[*?\[]")


class GlobError(ValueError):
    """A malformed glob or pattern."""


def is_glob(path: str) -> bool:
    return _GLOB_CHARS_RE.search(path) is not None


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard: every match starts with it."""
    match = _GLOB_CHARS_RE.search(pattern)
    return pattern if match is None else pattern[: match.start()]


def _class_regex(segment: str, start: int) -> tuple[str, int] | None:
    """Regex for the `[...]` class opening at `start`, and the index after it; None if unclosed."""
    i = start + 1
    negate = i < len(segment) and segment[i] in "!^"
    if negate:
        i += 1
    body_start = i
    if i < len(segment) and segment[i] == "]":  # a leading ] is a member, as in fnmatch
        i += 1
    close = segment.find("]", i)
    if close < 0:
        return None
    body = segment[body_start:close].replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")
    body = body.replace("]", "\\]")
    # A negated class must still not cross a segment boundary.
    return (f"[^{body}/]" if negate else f"[{body}]"), close + 1


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (found := _class_regex(segment, i)) is not None:
            out.append(found[0])
            i = found[1]
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex that fullmatches exactly the paths the glob names."""
    segments = pattern.split("/")
    parts: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            parts.append(".+" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(segment) + ("" if last else "/"))
    try:
        return re.compile("".join(parts))
    except re.error as exc:  # e.g. a reversed range [z-a]
        raise GlobError(f"bad glob {pattern!r}: {exc}") from None


def split_pattern(pattern: str) -> tuple[str, str]:
    """`src/%.c` -> (`src/`, `.c`); the caller has checked there is exactly one `%`."""
    prefix, _, suffix = pattern.partition("%")
    return prefix, suffix


def patterns_overlap(produced: str, wanted: str) -> bool:
    """Whether some path made from `produced` (with any stem) can match `wanted` (with some stem).

    Both are `prefix%suffix`; stems are arbitrary non-empty strings, so the two overlap exactly
    when one prefix extends the other and one suffix extends the other.
    """
    p_pre, p_suf = split_pattern(produced)
    w_pre, w_suf = split_pattern(wanted)
    prefixes = p_pre.startswith(w_pre) or w_pre.startswith(p_pre)
    suffixes = p_suf.endswith(w_suf) or w_suf.endswith(p_suf)
    return prefixes and suffixes


def match_stem(path: str, prefix: str, suffix: str) -> str | None:
    """The stem when `path` matches `prefix%suffix` with a non-empty stem."""
    if len(path) > len(prefix) + len(suffix) and path.startswith(prefix) and path.endswith(suffix):
        return path[len(prefix) : len(path) - len(suffix)]
    return None


class PathIndex:
    """A sorted, deduplicated set of project paths, queried by prefix."""

    def __init__(self, paths: Iterable[str]) -> None:
        # Sorting before deduplicating keeps already-sorted runs (a file walk, a rule's outputs)
        # cheap for timsort; a set first would scramble them.
        ordered = sorted(paths)
        self._set = frozenset(ordered)
        if len(self._set) != len(ordered):
            ordered = [p for i, p in enumerate(ordered) if i == 0 or p != ordered[i - 1]]
        self.paths: list[str] = ordered

    def __contains__(self, path: object) -> bool:
        return path in self._set

    def with_prefix(self, prefix: str) -> list[str]:
        """Every path starting with `prefix`, sorted; a contiguous run in the sorted list."""
        if not prefix:
            return self.paths
        paths = self.paths
        # U+10FFFF is a noncharacter: no path has it, so it sorts after every extension of prefix.
        return paths[bisect_left(paths, prefix) : bisect_left(paths, prefix + "\U0010ffff")]

    def glob(self, pattern: str) -> list[str]:
        """Sorted matches of a glob."""
        fullmatch = compile_glob(pattern).fullmatch
        return [p for p in self.with_prefix(literal_prefix(pattern)) if fullmatch(p)]

    def stems(self, prefix: str, suffix: str) -> list[tuple[str, str]]:
        """(path, stem) for every path matching `prefix%suffix`, sorted by path."""
        start, cut, shortest = len(prefix), len(suffix), len(prefix) + len(suffix)
        return [
            (path, path[start : len(path) - cut])
            for path in self.with_prefix(prefix)
            if len(path) > shortest and path.endswith(suffix)
        ]
