"""Which project files may have changed since the last build, from inotify: the build server
compares those few with the no-op stamp instead of stat'ing every file it vouches for.

The resident build server (majordomo/build_server.py) watches every project directory the stamp
of its last build vouches for. At each request it takes the paths named by the events since the
previous request (`take`); the stamp comparison (noop.changed_among) then stats only those, the
files a directory watch cannot vouch for (symlinks, files with other hard links, files outside
the watched directories), the recipe file and the tools. That is ninja's no-op work done before
the user asks.

The watch only ever narrows a comparison with the stamp, never replaces it, and it says "I cannot
tell" (take returns None, and the server stats everything as before) whenever events may be
missing: a queue overflow, a lost watch (directory removed, moved, unmounted), a stamp it did not
adopt, a remote filesystem (another host's writes raise no event here), or watches it could not
add (the user's inotify limit). Events are queued by the kernel in the system call that changes
the file, so a change made before `majordomo build` starts is in the queue when the server reads it.

What no watch sees: a file written through a hard link made from outside the project after the
stamp was taken, or changed by mmap without a close. The full comparison (a server restart, any
structural change) still catches those.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
from stat import S_ISDIR

from majordomo import noop
from majordomo.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    REMOTE_FILESYSTEMS,
    Inotify,
    filesystem_type,
)

log = logging.getLogger(__name__)
DIRECTORY_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                  | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
# A directory that refuses a watch (no permission, gone meanwhile) is left out and stat'ed at each
# request instead; any other failure (the user's watch limit, no memory) turns the watch off.
SKIPPABLE = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR})
MAX_DIRTY = 50_000  # more paths named between two requests than this: compare everything instead
INLINE_COMPARE = 64  # up to this many named paths are compared on the event loop, more in a thread
Stamp = tuple[object, ...]


class TreeWatch:
    """inotify watches on one project's directories, and the paths their events named."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.disabled: str | None = None  # why this watch cannot help (then `take` is always None)
        self._inotify: Inotify | None = None
        self._dir_of: dict[int, str] = {}  # watch descriptor -> project directory ("" is the root)
        self._watch_of: dict[str, int] = {}
        self._devices: set[int] = set()  # filesystems checked to be local
        self._dirty: set[str] = set()  # paths named by events since the last `take`
        self._unknown = True  # events may have been missed since the last `take`
        self._whole_next = True  # the next adopt re-watches every directory and compares every file
        self._stamp: Stamp | None = None  # the stamp the watches and `_uncovered` vouch for
        self._uncovered: set[str] = set()  # stamp paths named at every `take`
        self._taken: set[str] = set()  # what the last `take` handed out: checked again at `adopt`

    def start(self) -> None:
        try:
            self._inotify = Inotify()
            asyncio.get_running_loop().add_reader(self._inotify.fd, self._drain)
        except OSError as exc:
            self._disable(f"no inotify: {exc}")

    def close(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None

    def take(self, stamp: Stamp | None) -> set[str] | None:
        """The paths that may differ from `stamp` (the last adopted one) since the last `take`, and
        starts collecting anew; None when the events cannot tell (compare everything)."""
        self._drain()
        dirty, self._dirty = self._dirty, set()
        unknown, self._unknown = self._unknown, False
        if unknown or self.disabled or stamp is None or stamp is not self._stamp:
            # The caller compares everything, but its build refreshes only the stamp entries it
            # visits: the next adopt must compare every file again to find the rest.
            self._taken = set()
            self._whole_next = True
            return None
        self._taken = dirty | self._uncovered
        return self._taken

    async def adopt(self, stamp: Stamp, base: Stamp | None, recheck: set[str] | None,
                    index: dict[str, int] | None = None) -> None:
        """Vouch for `stamp`, just written: a refresh of `base` at the paths `recheck` (None: a
        whole new stamp). Watches are added for its new directories; a path whose stat already
        differs from it goes back to the dirty set. `index`: the stamp's path index, if known."""
        if self.disabled or self._inotify is None:
            return
        # A refresh keeps its base's directories, whose watches were reconciled then.
        whole = recheck is None or base is None or base is not self._stamp or self._whole_next
        unwatched: list[str] = []
        if whole:
            # Whatever events were missed before now, the whole audit below compares every file
            # with the stamp; an overflow or a lost watch from here on is flagged again.
            self._drain()
            self._whole_next = self._unknown = False
            try:
                unwatched = await asyncio.to_thread(self._reconcile, noop.stamp_dirs(stamp))
            except OSError as exc:
                self._disable(str(exc))
                return
        paths = None if whole else (recheck or set()) | self._taken
        moved, uncovered = await asyncio.to_thread(noop.audit, self.root, stamp, set(self._watch_of), paths, index)
        if paths is None:
            self._uncovered = {*uncovered, *unwatched}
        else:
            self._uncovered = (self._uncovered - paths) | set(uncovered)
        self._dirty.update(moved)
        self._taken = set()
        self._stamp = stamp

    def _reconcile(self, dirs: list[str]) -> list[str]:
        """Watch exactly the directories `dirs` (in a thread: a stat and a system call each), and
        return those that refused a watch. Every one is added again: the kernel gives back the
        same descriptor for a directory still watched, and a new one for a directory that was
        removed and made again (even with the same inode number), or moved away and replaced.
        Raises OSError when the watch cannot work at all."""
        inotify = self._inotify
        assert inotify is not None
        watch_of: dict[str, int] = {}
        unwatched: list[str] = []
        for rel in dirs:
            path = os.path.join(self.root, rel) if rel else self.root
            try:
                st = os.lstat(path)
                if not S_ISDIR(st.st_mode):
                    continue  # replaced by a file: its parent's stat tells the comparison
                if st.st_dev not in self._devices:
                    kind = filesystem_type(path)
                    if kind in REMOTE_FILESYSTEMS:
                        raise OSError(f"{path} is on a network filesystem (type {kind:#x}): edits made on other "
                                      "hosts raise no event here")
                    self._devices.add(st.st_dev)
                watch_of[rel] = inotify.add_watch(path, DIRECTORY_MASK)
            except FileNotFoundError:
                continue  # gone already: its parent's stat tells the comparison
            except OSError as exc:
                if exc.errno not in SKIPPABLE:
                    raise
                unwatched.append(rel)
        dir_of = {wd: rel for rel, wd in watch_of.items()}
        if len(dir_of) != len(watch_of):
            raise OSError("one directory is in the project under two names (a bind mount?)")
        stale = set(self._dir_of) - set(dir_of)
        self._watch_of, self._dir_of = watch_of, dir_of  # before removing: their IN_IGNORED is not a loss
        for wd in stale:
            inotify.remove_watch(wd)
        return unwatched

    def _drain(self) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read()
        except OSError as exc:
            self._disable(f"reading inotify events failed: {exc}")
            return
        dirty = self._dirty
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                self._unknown = True
                continue
            rel = self._dir_of.get(wd)
            if rel is None:
                continue
            if mask & (IN_IGNORED | IN_MOVE_SELF):
                # Removed, unmounted, or moved (its watch now reports another path): the next
                # comparison is a whole one, and the next adopt watches the tree again.
                self._unknown = self._whole_next = True
            dirty.add(rel)  # its own stat is compared too (entries added, removed, renamed; its mode)
            if name:
                dirty.add(posixpath.join(rel, name) if rel else name)
        if len(dirty) > MAX_DIRTY:  # churn while idle (a package install): stop counting, compare all
            dirty.clear()
            self._unknown = True

    def _disable(self, why: str) -> None:
        if self.disabled is None:
            log.warning("watching %s for changes is off, every build stats every file instead: %s", self.root, why)
        self.disabled = why
        self._stamp = None
        self.close()
