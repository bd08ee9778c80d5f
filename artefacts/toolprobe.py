"""Tool identities: which version of a tool a pod has, cheaply re-checked by the binary's stat.

Chefs advertise these identities and the MajorDomo folds them into action keys, so a step run
with one compiler is never reused for another. Both sides use this one function, so the strings
agree; a probe is a subprocess, cached per (path, size, mtime, inode) of the resolved binary.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

# How to ask each tool for its identity; the default is `--version`. cc-like tools add the target
# triple, since the same version number can build for different machines.
_VERSION_ARGS: dict[str, list[list[str]]] = {
    "cc": [["--version"], ["-dumpmachine"]],
    "gcc": [["--version"], ["-dumpmachine"]],
    "clang": [["--version"], ["-dumpmachine"]],
    "c++": [["--version"], ["-dumpmachine"]],
    "g++": [["--version"], ["-dumpmachine"]],
    "sh": [],  # dash has no --version; the binary's bytes identity (size) stands for it
    "bwrap": [["--version"]],
}


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


class ToolProbe:
    """Resolve and version tools, with a persistent cache keyed by the binary's stat."""

    def __init__(self, cache_file: Path | None = None) -> None:
        self._cache_file = cache_file
        self._cache: dict[str, list[str]] = {}  # realpath -> [stat key, identity]
        self._dirty = False
        if cache_file and cache_file.exists():
            try:
                self._cache = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                self._cache = {}

    def save(self) -> None:
        if self._cache_file and self._dirty:
            tmp = self._cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._cache))
            os.replace(tmp, self._cache_file)
            self._dirty = False

    def cached_identity(self, tool: str) -> str | None:
        """The identity if the cache vouches for the binary as it is now; None means 'probe it'."""
        found = shutil.which(tool)
        if not found:
            return None
        real = os.path.realpath(found)
        cached = self._cache.get(real)
        return cached[1] if cached and cached[0] == _stat_key(real) else None

    async def identity(self, tool: str) -> str | None:
        """`<first line of --version> [<target>]`, or None when the tool is not installed."""
        found = shutil.which(tool)
        if not found:
            return None
        real = os.path.realpath(found)
        key = _stat_key(real)
        cached = self._cache.get(real)
        if cached and cached[0] == key:
            return cached[1]
        ident = await _probe(tool, found, key)
        self._cache[real] = [key, ident]
        self._dirty = True
        return ident

    async def identities(self, tools: list[str]) -> dict[str, str]:
        """Identities of the tools that exist; missing tools are left out."""
        found = await asyncio.gather(*(self.identity(t) for t in tools))
        return {t: i for t, i in zip(tools, found, strict=True) if i is not None}


async def _probe(tool: str, path: str, stat_key: str) -> str:
    parts: list[str] = []
    for args in _VERSION_ARGS.get(tool, [["--version"]]):
        proc = await asyncio.create_subprocess_exec(
            path, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            continue
        line = next((ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()), "")
        if line:
            parts.append(line)
    # Without version output, the binary's own identity (size etc.) is the best we have.
    return " | ".join(parts) if parts else f"{os.path.basename(path)} stat={stat_key.split(':')[0]}"
