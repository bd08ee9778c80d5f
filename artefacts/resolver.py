"""Which file serves a digest: the resolver an artefact server asks (no asyncssh import)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from protocol.digests import store_relpath

Resolver = Callable[[str], Path | None]
"""digest -> canonical (realpath'ed, absolute) path of a regular file holding it, or None.

Called in a worker thread. The server opens the path with O_NOFOLLOW and refuses it unless the kernel's
name for the opened descriptor is exactly that path, so a non-canonical path is refused, not served.
"""


def store_resolver(store_root: Path) -> Resolver:
    """Resolve digests to files of a content-addressed store laid out as `<root>/<algo>/<ab>/<cd>/<hex>`.

    Refuses a digest unless the real path of its file stays inside the real store root and the entry
    itself is a regular file, not a symlink (a symlink planted in the store must not leak what it points at).
    """
    root = os.path.realpath(store_root)

    def resolve(digest: str) -> Path | None:
        candidate = os.path.join(root, store_relpath(digest))
        real = os.path.realpath(candidate)
        if real != candidate or os.path.commonpath([root, real]) != root:
            return None  # some component is a symlink, or the path leaves the root
        try:
            st = os.lstat(real)
        except OSError:
            return None
        return Path(real) if stat.S_ISREG(st.st_mode) else None

    return resolve
