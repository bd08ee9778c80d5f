"""Take same-host owners' files into a store, many at once.

A fresh chef's first steps each lack dozens of small files (a C compile: its source and every header
it may read), all owned by pods on the same host. Taken one by one, each costs three thread hops and
a commit with its own directory fsyncs, which on two busy cores came to ~35 ms before a first
compile could start. Here one call in one thread stages them all (a hardlink of a store entry, or a
verified copy of anything else: `artefacts/samehost.py`), then commits them together, fsyncing each
touched directory once.

Sync: run `take_into_store` in a thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from artefacts.samehost import LocalMismatch, copy_verified, link_entry, local_path
from artefacts.store import LINK_FALLBACK_ERRNOS, Store
from protocol.messages import LAYOUT_STORE, LocalAccess

log = logging.getLogger(__name__)

# How a pull was satisfied.
VIA_HELD = "held"  # the store had it already
VIA_SFTP = "sftp"
VIA_LINK = "link"  # hardlinked from a same-host owner's store
VIA_COPY = "copy"  # copied from a same-host owner's file, verified


class LocalWant(NamedTuple):
    digest: str
    size: int
    access: LocalAccess  # the owner's files on this host
    hint: str  # the artefact's project path: a workspace owner's file is found by it


class Taken(NamedTuple):
    path: Path
    via: str  # VIA_HELD, VIA_LINK or VIA_COPY


def take_into_store(store: Store, wanted: Sequence[LocalWant], *, link: bool) -> dict[str, Taken | None]:
    """Each wanted digest -> where it now is in `store` and how it came, or None when its owner's file
    could not give it (gone, changed since it was hashed, unreadable): the caller tries elsewhere.

    Store entries of the owner are hardlinked when `link` (only then: a workspace file stays the
    user's, to chmod or edit in place), everything else copied; both are verified against the digest."""
    results: dict[str, Taken | None] = {}
    staged: list[tuple[Path, str, str]] = []  # temp file, digest, how
    try:
        for want in wanted:
            if want.digest in results:
                continue
            if store.has(want.digest):
                results[want.digest] = Taken(store.path_for(want.digest), VIA_HELD)
                continue
            try:
                temp, via = _stage(store, want, link=link)
            except (OSError, LocalMismatch) as exc:
                log.debug("same-host take of %s from %s failed: %s", want.digest, want.access.root, exc)
                temp, via = None, ""
            results[want.digest] = None
            if temp is not None:
                staged.append((temp, want.digest, via))
        paths = store.commit_many([(temp, digest) for temp, digest, _via in staged])
    except BaseException:
        for temp, _digest, _via in staged:
            temp.unlink(missing_ok=True)
        raise
    for (_temp, digest, via), path in zip(staged, paths, strict=True):
        results[digest] = Taken(path, via)
    return results


def _stage(store: Store, want: LocalWant, *, link: bool) -> tuple[Path | None, str]:
    """A temp file in `store` holding the wanted bytes, verified, and how they came; None when the
    owner's file cannot give them."""
    access = want.access
    if link and access.linkable and access.layout == LAYOUT_STORE:
        source = local_path(access, want.digest)
        if source is None:
            return None, ""
        temp = store.new_temp()
        try:
            if link_entry(source, temp, want.digest, want.size):
                return temp, VIA_LINK
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno not in LINK_FALLBACK_ERRNOS:
                raise
        # not linkable here (another filesystem, too many links): copied below
    source = local_path(access, want.digest, want.hint)
    if source is None:
        return None, ""
    temp = store.new_temp()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            ok = copy_verified(source, fd, want.digest, want.size)
        finally:
            os.close(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if not ok:
        temp.unlink(missing_ok=True)
        return None, ""
    return temp, VIA_COPY
