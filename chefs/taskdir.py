"""A task dir: a fresh directory per step, inputs hardlinked read-only from the store."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from artefacts.lifeline import pid_alive
from chefs.jail_init import empty_dir


class LinkingStore(Protocol):
    def link_entry(self, digest: str, dest: str) -> os.stat_result: ...
    def path_for(self, digest: str) -> Path: ...


class TaskDir:
    """Create with `make`, remove with `remove` (call it in a `finally`)."""

    def __init__(self, parent: Path, step_id: str, *, in_place: Path | None = None) -> None:
        """A new directory under `parent`; or, given `in_place`, that existing empty directory (a
        jail's work dir, chefs/jail.py), which `remove` empties rather than removes."""
        self.reused = in_place is not None
        if in_place is not None:
            self.path = in_place
            return
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in step_id)[:60]
        # The pid prefix lets `remove_leftovers` spare the task dirs of a live chef.
        self.path = parent / f"{os.getpid()}-{safe}-{uuid.uuid4().hex[:12]}"

    def make(self, store: LinkingStore, inputs: list[tuple[str, str]], outputs: list[str],
             executables: frozenset[str] = frozenset()) -> dict[str, os.stat_result]:
        """Link each (path, digest) input in place and create the output directories; return the
        linked store entries' stats by digest (what the link shares: owner, inode, mtime).

        Copies instead of links where a link cannot serve: executables (a hardlink shares the
        store file's 0444 mode; the store names bytes, not modes) get 0555, and an input that is
        also an output (LaTeX rewriting its .aux in a cycle) gets a private writable copy.
        Plain strings, not Paths, and each directory made once: a step may have hundreds of inputs."""
        base = str(self.path)
        os.makedirs(base, exist_ok=self.reused)
        made = {base}

        def parent_of(rel: str) -> None:
            directory = os.path.dirname(rel)
            if directory and (full := f"{base}/{directory}") not in made:
                os.makedirs(full, exist_ok=True)
                made.add(full)

        rewritten = set(outputs)
        linked: dict[str, os.stat_result] = {}
        for rel, digest in inputs:
            parent_of(rel)
            dest = f"{base}/{rel}"
            if rel in executables or rel in rewritten:
                shutil.copyfile(store.path_for(digest), dest)
                os.chmod(dest, 0o555 if rel in executables else 0o644)
                continue
            linked[digest] = store.link_entry(digest, dest)
        for rel in outputs:
            parent_of(rel)
        return linked

    def input_changed(self, inputs: list[tuple[str, str]], store_stat: dict[str, os.stat_result]) -> str | None:
        """The first input whose link no longer is the stored file unchanged (a step wrote to it)."""
        for rel, digest in inputs:
            try:
                st = os.lstat(self.path / rel)
            except FileNotFoundError:
                continue  # removing its link is harmless: the store keeps the file
            ref = store_stat.get(digest)
            if ref and st.st_ino == ref.st_ino and (st.st_size, st.st_mtime_ns) != (ref.st_size, ref.st_mtime_ns):
                return rel
        return None

    async def remove(self) -> None:
        await asyncio.to_thread(empty_tree if self.reused else remove_tree, self.path)


def remove_leftovers(parent: Path) -> int:
    """Remove task dirs a killed chef left (its pid is gone, or is ours from a previous life);
    returns how many. Sync: run it in a thread, at start."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(parent):
            owner = entry.name.split("-", 1)[0]
            if owner.isdigit() and int(owner) != os.getpid() and pid_alive(int(owner)):
                continue
            try:
                remove_tree(Path(entry.path))
            except OSError:
                continue  # best effort: one that cannot go must not keep the chef from starting
            removed += 1
    return removed


def remove_tree(path: Path) -> None:
    """Remove `path` and all under it; nothing if it is gone."""
    if os.path.lexists(path):
        empty_tree(path)
        os.rmdir(path)


def empty_tree(path: Path) -> None:
    """Remove everything under `path`, keeping it (a jail's work dir is a mount point: the same
    inode must stay), whatever a step left there: a tree thousands deep, directories it made
    unreadable, extended attributes (or an ACL) on `path` itself."""
    top = str(path)
    os.chmod(top, 0o755)
    empty_dir(top)
    try:
        for name in os.listxattr(top, follow_symlinks=False):  # a step may have set some (or an ACL)
            os.removexattr(top, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    os.utime(top)
