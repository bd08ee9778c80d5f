"""Tool identities: which version of a tool a pod has, cheaply re-checked by the binary's stat.

Chefs advertise these identities and the MajorDomo folds them into action keys, so a step run
with one compiler is never reused for another. Both sides use this one function, so the strings
agree; a probe is a subprocess, cached per (path, size, mtime, inode) of the resolved binary.

An identity belongs to the machine's binary, not to a project: besides its own file (a project's
`.majordomo/tools.json`, a chef's home), every probe reads and adds to one cache per user,
`$XDG_CACHE_HOME/computepods/tools.json`. A new checkout, or an embedded chef whose home was just
made, then starts without probing: `biber --version` alone takes ~0.23 s, and each of the two
embedded chefs probed ~20 tools at every fresh start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

from artefacts.childwatch import signal_child

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


def machine_cache_file() -> Path:
    """The per-user cache of tool identities shared by every project and local chef."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "computepods" / "tools.json"


def _read_cache(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_cache(path: Path, cache: dict[str, list[str]]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes may save at once
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, path)


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


class ToolProbe:
    """Resolve and version tools, with a persistent cache keyed by the binary's stat."""

    def __init__(self, cache_file: Path | None = None, machine_file: Path | None = None) -> None:
        """`machine_file`: the per-user cache (default `machine_cache_file()`), read only when this
        one misses. Entries are checked against the binary's stat before use, whichever file."""
        self._cache_file = cache_file
        self._machine_file = machine_file or machine_cache_file()
        self._cache: dict[str, list[str]] = _read_cache(cache_file)  # realpath -> [stat key, identity]
        self._machine: dict[str, list[str]] | None = None
        self._probed: dict[str, list[str]] = {}  # what this process learnt, for the machine cache
        self._dirty = False

    def save(self) -> None:
        if not self._dirty:
            return
        if self._cache_file:
            _write_cache(self._cache_file, self._cache)
        if self._probed:
            # Read again before adding ours: another process may have added entries since.
            with contextlib.suppress(OSError):  # a read-only home only costs the next start its probes
                self._machine_file.parent.mkdir(parents=True, exist_ok=True)
                _write_cache(self._machine_file, {**_read_cache(self._machine_file), **self._probed})
            self._probed = {}
        self._dirty = False

    def _known(self, real: str, key: str) -> str | None:
        cached = self._cache.get(real)
        if cached and cached[0] == key:
            return cached[1]
        if self._machine is None:
            self._machine = _read_cache(self._machine_file)
        cached = self._machine.get(real)
        if cached and cached[0] == key:
            self._cache[real] = cached  # this file learns it too: the next start reads one file
            self._dirty = True
            return cached[1]
        return None

    def cached_identity(self, tool: str) -> str | None:
        """The identity if a cache vouches for the binary as it is now; None means 'probe it'."""
        found = shutil.which(tool)
        if not found:
            return None
        real = os.path.realpath(found)
        return self._known(real, _stat_key(real))

    async def identity(self, tool: str) -> str | None:
        """`<first line of --version> [<target>]`, or None when the tool is not installed."""
        found = shutil.which(tool)
        if not found:
            return None
        real = os.path.realpath(found)
        key = _stat_key(real)
        known = self._known(real, key)
        if known is not None:
            return known
        ident = await _probe(tool, found, key)
        self._cache[real] = self._probed[real] = [key, ident]
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
            signal_child(proc, signal.SIGKILL)
            await proc.wait()
            continue
        line = next((ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()), "")
        if line:
            parts.append(line)
    # Without version output, the binary's own identity (size etc.) is the best we have.
    return " | ".join(parts) if parts else f"{os.path.basename(path)} stat={stat_key.split(':')[0]}"
