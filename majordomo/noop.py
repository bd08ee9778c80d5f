"""The no-op fast path: prove "nothing changed" from file stats alone, before loading anything.

After a fully successful build, the stamp `.majordomo/noop.stamp` records what that result
depended on: the build's arguments, the recipe file, every project directory (an added or
removed file changes its directory), every source and discovered input, every output left in the
workspace, and the tool binaries. The next `majordomo build` compares those stats first; if
all match, nothing can have changed and it exits without importing the engine, the recipe
loader or asyncio. That is what ninja does with `.ninja_log` and mtimes.

It is conservative: any difference or unreadable stamp sends the build down the normal path,
which decides from content digests. A file changed again within one tick of the kernel's
coarse clock could keep its mtime, so the stamp is taken only once every recorded mtime is
older than a tick (waiting at most ~20 ms after a build that just wrote outputs), and never on
a filesystem whose times have whole-second granularity.
"""

from __future__ import annotations

import marshal
import os
import shutil
import time
from array import array
from collections.abc import Mapping
from stat import S_ISLNK

STAMP_FORMAT = 4
_FIELDS = 5  # per file in the packed stat array
MAX_TOUCHED = 64  # more files with new stats than this: let the full path decide
CHANGED_MAX = 1000  # more changed files than this: a rebuild from them is no cheaper than the full path
# File times come from the kernel's coarse clock (one tick, at most ~10 ms, behind the fine one):
# an entry stat'ed less than a tick after its last change could change again unseen.
TICK_MARGIN_NS = 20_000_000
_Stat = tuple[int, int, int, int, int]  # size, mtime_ns, ino, ctime_ns, executable bits
StampId = tuple[int, int, int]  # the stamp file's inode, mtime_ns and size
_XBITS = 4


def _stat(path: str) -> _Stat | None:
    try:
        return stat_tuple(os.stat(path))
    except OSError:
        return None


def stamp_path(root: str) -> str:
    return os.path.join(root, ".majordomo", "noop.stamp")


def _project_dirs(root: str) -> list[str]:
    """Every directory a glob could look into (the recipe loader's walk: dot-dirs skipped)."""
    found = [""]
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                child = f"{rel}/{entry.name}" if rel else entry.name
                found.append(child)
                stack.append(child)
    return found


class ListedDirs:
    """The project's directories' stats as of when its files were listed for a build (globs
    expanded), and when that was."""

    __slots__ = ("at_ns", "recipe", "recipe_at_ns", "stats")

    def __init__(self) -> None:
        self.at_ns = 0
        self.stats: dict[str, _Stat | None] = {}
        # The recipe file's stat just before the build read it, and when: the stamp, written after
        # the build (by the resident server, after its answer), must not vouch for a later save.
        self.recipe: _Stat | None = None
        self.recipe_at_ns = 0

    def read_recipe_stat(self, path: str) -> None:
        """Take the recipe's stat now, before it is read (a save after this changes it)."""
        self.recipe_at_ns = time.time_ns()
        self.recipe = _stat(path)

    def recipe_as_read(self) -> _Stat | None:
        """The recipe's stat as the build read it; None if it cannot vouch (changed within a clock
        tick of the reading: a later save could keep its times)."""
        if self.recipe is None or self.recipe[1] >= self.recipe_at_ns - TICK_MARGIN_NS:
            return None
        return self.recipe


StampFile = tuple[str, str, tuple[int, int, int, int] | None]  # path, digest, stat when its digest was taken


def stat_tuple(st: os.stat_result) -> _Stat:
    # The executable bits are part of action keys (`./run.sh` must run): a chmod is a change.
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode & 0o111)


def write_stamp(root: str, args_key: str, recipe_file: str, files: list[StampFile], tools: list[str],
                steps: int, *, written: Mapping[str, _Stat] | None = None, listed: ListedDirs | None = None,
                ) -> tuple[object, ...] | None:
    """Record the stats that vouch for a successful build (or remove the stamp if they cannot);
    returns what was recorded.

    A file's third item is its stat when the build took its digest: a file saved since (during the
    build) is recorded with that older stat, so the next check sees the difference and hashes it.
    Directories likewise: `listed` holds their stats from when the build listed the project's
    files (expanded its globs), and `written` those of the directories the build itself wrote in,
    right after its last write there; so a file added or removed during the build or after its
    answer moves its directory past the stamp's stat. Without `listed`, every directory is
    stat'ed now (the in-process build without a listing, e.g. tests)."""
    for _attempt in range(2):
        now = time.time_ns()
        entries = [(p, _as_taken(_stat(os.path.join(root, p)), taken), digest) for p, digest, taken in files]
        dirs = _dir_stats(root, listed, written or {})
        recipe = _stat(os.path.join(root, recipe_file))
        if listed is not None and listed.recipe_at_ns and recipe != listed.recipe_as_read():
            recipe = None  # saved since the build read it, or too close to that: the next check must look
        stats = [s for s in (*(e[1] for e in entries), *(d[1] for d in dirs), recipe) if s is not None]
        newest = _wait_for_tick(stats, now)
        if newest is not None:
            break
    else:
        remove_stamp(root)
        return None
    if recipe is None or newest >= time.time_ns() - TICK_MARGIN_NS or (
            stats and all(s[1] % 1_000_000_000 == 0 for s in stats)):
        # Still too fresh, dated in the future, or whole-second file times: stats cannot vouch.
        remove_stamp(root)
        return None
    tool_stats = []
    for tool in tools:
        found = shutil.which(tool)
        real = os.path.realpath(found) if found else ""
        tool_stats.append((tool, real, _stat(real) if real else None))
    paths, stats_blob = _pack([(p, st) for p, st, _ in entries])
    digests = "\0".join(digest for _, _, digest in entries)
    dir_paths, dir_blob = _pack(dirs)
    data = (STAMP_FORMAT, args_key, recipe_file, recipe, paths, stats_blob, digests, dir_paths, dir_blob,
            tool_stats, steps)
    _dump(root, data)
    return data


def refresh_stamp(root: str, data: tuple[object, ...], files: list[StampFile], written: Mapping[str, _Stat],
                  steps: int, index: dict[str, int] | None = None) -> tuple[object, ...] | None:
    """The stamp `data` (which held when the build started) with `files` (what the build visited
    read and wrote) stat'ed again, and the stats of the directories the build wrote in
    (`written`); written, and returned.
    O(files), not O(project): a carried-over build (majordomo/carryover.py) visits a few steps of
    thousands. None when `files` names a file the stamp does not know (a newly discovered input)
    or the build wrote in a new directory: the caller writes a whole stamp instead. `index` (path
    -> position in the stamp) saves splitting the stamp's paths again."""
    paths_s, stats_blob, digests_s, dirs_s, dirs_blob = data[4], data[5], data[6], data[7], data[8]
    assert isinstance(paths_s, str) and isinstance(stats_blob, bytes) and isinstance(digests_s, str)
    assert isinstance(dirs_s, str) and isinstance(dirs_blob, bytes)
    if index is None:
        index = stamp_index(data)
    if any(p not in index for p, _, _ in files):
        return None
    dirs, dir_stats = _unpack(dirs_s, dirs_blob)
    dir_index = {d: i for i, d in enumerate(dirs)}
    if any(d not in dir_index for d in written):
        return None
    fresh_dirs = [(dir_index[d], st) for d, st in written.items()]
    for _attempt in range(2):
        now = time.time_ns()
        fresh = [(index[p], _as_taken(_stat(os.path.join(root, p)), taken), digest) for p, digest, taken in files]
        newest = _wait_for_tick([s for _, s, _ in fresh] + [s for _, s in fresh_dirs], now)
        if newest is not None:
            break
    else:
        return None
    if newest >= time.time_ns() - TICK_MARGIN_NS:
        return None
    stats = array("q")
    stats.frombytes(stats_blob)
    digests = digests_s.split("\0")
    for i, st, digest in fresh:
        stats[i * _FIELDS:(i + 1) * _FIELDS] = array("q", st if st is not None else (-1,) * _FIELDS)
        digests[i] = digest
    for i, st in fresh_dirs:
        dir_stats[i * _FIELDS:(i + 1) * _FIELDS] = array("q", st if st is not None else (-1,) * _FIELDS)
    refreshed = (*data[:5], stats.tobytes(), "\0".join(digests), dirs_s, dir_stats.tobytes(), data[9], steps)
    _dump(root, refreshed)
    return refreshed


def listed_from(data: tuple[object, ...], at_ns: int) -> ListedDirs:
    """A stamp's directory stats as a listing taken at `at_ns` (they held then: the check said so)."""
    dirs, stats = _stamp_dir_columns(data)
    listed = ListedDirs()
    listed.at_ns = at_ns
    listed.stats = {d: _stat_at(stats, i) for i, d in enumerate(dirs)}
    recipe = data[3]
    if isinstance(recipe, tuple):  # it held when the check said so, before `at_ns`
        listed.recipe, listed.recipe_at_ns = recipe, at_ns  # type: ignore[assignment]
    return listed


def stamp_index(data: tuple[object, ...]) -> dict[str, int]:
    """Each path of a stamp's data -> its position."""
    paths_s = data[4]
    assert isinstance(paths_s, str)
    return {p: i for i, p in enumerate(paths_s.split("\0"))} if paths_s else {}


def _wait_for_tick(stats: list[_Stat | None], now: int) -> int | None:
    """The newest mtime among `stats` once it is a clock tick old (sleeping for that, at most ~21 ms:
    a fetched output was just written), or None when the caller must stat again after the sleep."""
    newest = max((s[1] for s in stats if s is not None), default=0)
    if newest < now - TICK_MARGIN_NS or newest > now:
        return newest  # old enough, or dated in the future: no wait makes its stat trustworthy
    time.sleep(min(newest + TICK_MARGIN_NS - now, TICK_MARGIN_NS) / 1e9 + 0.001)
    return None


def _dir_stats(root: str, listed: ListedDirs | None, written: Mapping[str, _Stat]) -> list[tuple[str, _Stat | None]]:
    """Every project directory with the stat the stamp vouches for (see `write_stamp`)."""
    now_dirs = _project_dirs(root)
    if listed is None:
        return [(d, _stat(os.path.join(root, d) if d else root)) for d in now_dirs]
    listed_at, before = listed.at_ns, listed.stats
    found: list[tuple[str, _Stat | None]] = []
    for d in now_dirs:
        st: _Stat | None
        if d in written:
            st = written[d]
        elif d in before:
            st = before[d]
            if st is not None and st[1] >= listed_at - TICK_MARGIN_NS:
                st = None  # changed within a tick of the listing: a later change could keep its mtime
        else:
            st = None  # appeared during the build, not made by it: the next check must look
        found.append((d, st))
    return found


def _as_taken(now: _Stat | None, taken: tuple[int, int, int, int] | None) -> _Stat | None:
    if taken is None or (now is not None and now[:4] == taken):
        return now
    # Changed (or gone) since the build read or wrote it: the stamp must not vouch for now. Its mode
    # then is unknown (a chmod moves only the ctime): -1 matches no mode, so the next check cannot
    # take a mode change for a touch of the same bytes.
    return (*taken, -1)


def _pack(items: list[tuple[str, _Stat | None]]) -> tuple[str, bytes]:
    """Columns, not a tuple per file: one string of paths, one array of stats. marshal loads
    10,000 nested tuples in ~40 ms, these two objects in ~1 ms (the no-op budget is ~100 ms)."""
    stats = array("q")
    for _, st in items:
        stats.extend(st if st is not None else (-1,) * _FIELDS)
    return "\0".join(p for p, _ in items), stats.tobytes()


def _unpack(paths: str, blob: bytes) -> tuple[list[str], array[int]]:
    stats = array("q")
    stats.frombytes(blob)
    # By count, not by the string: a project without subdirectories has one directory, "".
    return (paths.split("\0") if len(stats) else []), stats


def _stat_at(stats: array[int], index: int) -> _Stat | None:
    base = index * _FIELDS
    if stats[base] == -1:
        return None
    return tuple(stats[base:base + _FIELDS])  # type: ignore[return-value]


def remove_stamp(root: str) -> None:
    try:
        os.unlink(stamp_path(root))
    except FileNotFoundError:
        pass


def _load_stamp(root: str) -> tuple[tuple[object, ...], StampId] | None:
    try:
        with open(stamp_path(root), "rb") as f:
            data = marshal.load(f)
            st = os.fstat(f.fileno())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not (isinstance(data, tuple) and len(data) == 11 and data[0] == STAMP_FORMAT):
        return None
    return data, (st.st_ino, st.st_mtime_ns, st.st_size)


def stamp_id(root: str) -> StampId | None:
    """Which stamp file is there now (a rewrite is another one): (inode, mtime_ns, size)."""
    try:
        st = os.stat(stamp_path(root))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def changed_files(root: str, data: tuple[object, ...], args_key: str, limit: int = CHANGED_MAX) -> list[str] | None:
    """The files among those a stamp's data vouches for whose stats changed since, or None when
    more than that changed: the arguments, the recipe file, a directory (a file added, removed or
    renamed), a tool, or more than `limit` files."""
    try:
        (_fmt, key, recipe_file, recipe, paths_s, stats_blob, digests_s, dirs_s, dirs_blob,
         tool_stats, _steps) = data
        paths, stats = _unpack(paths_s, stats_blob)  # type: ignore[arg-type]
        dirs, dir_stats = _unpack(dirs_s, dirs_blob)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    if key != args_key or _stat(os.path.join(root, recipe_file)) != recipe:  # type: ignore[arg-type]
        return None
    for index, rel in enumerate(dirs):
        if _stat(os.path.join(root, rel) if rel else root) != _stat_at(dir_stats, index):
            return None
    digests = digests_s.count("\0") + 1 if paths else 0  # type: ignore[union-attr]
    moved: list[str] = []
    # The hot loop of every no-op: 10,000 stats take ~14 ms of syscalls, so the Python around them
    # must stay thin (columns zipped, fields compared in place, no tuple per file: 18 -> 10 ms).
    # Relative to the root's descriptor: the kernel walks only the path below it (~15% faster).
    stat = os.stat
    columns = stats.tolist()
    if len(columns) != len(paths) * _FIELDS or digests != len(paths):
        return None  # a damaged stamp vouches for nothing
    rows = zip(paths, columns[0::_FIELDS], columns[1::_FIELDS], columns[2::_FIELDS], columns[3::_FIELDS],
               columns[4::_FIELDS], strict=True)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for rel, size, mtime, ino, ctime, xbits in rows:
            try:
                st = stat(rel, dir_fd=root_fd)
            except OSError:
                if size == -1:
                    continue  # absent then and now
            else:
                if (st.st_mtime_ns == mtime and st.st_ctime_ns == ctime and st.st_size == size
                        and st.st_ino == ino and st.st_mode & 0o111 == xbits):
                    continue
            if len(moved) >= limit:
                return None
            moved.append(rel)
    finally:
        os.close(root_fd)
    if not _same_tools(tool_stats):  # type: ignore[arg-type]
        return None
    return moved


def _same_tools(tool_stats: list[tuple[str, str, _Stat | None]]) -> bool:
    """Each tool is still found at the same binary, with the same stat."""
    for tool, real, st in tool_stats:
        found = shutil.which(tool)
        if (os.path.realpath(found) if found else "") != real or (real and _stat(real) != st):
            return False
    return True


def changed_among(root: str, data: tuple[object, ...], args_key: str, candidates: set[str],
                  index: dict[str, int] | None = None) -> list[str] | None:
    """`changed_files` when only `candidates` can have moved (a tree watch named them: paths of
    files and directories). The arguments, the recipe file and the tools are checked as always."""
    try:
        (_fmt, key, recipe_file, recipe, _paths, stats_blob, _digests, dirs_s, dirs_blob,
         tool_stats, _steps) = data
        assert isinstance(stats_blob, bytes) and isinstance(dirs_s, str) and isinstance(dirs_blob, bytes)
    except (ValueError, AssertionError):
        return None
    if key != args_key or _stat(os.path.join(root, recipe_file)) != recipe:  # type: ignore[arg-type]
        return None
    dirs, dir_stats = _unpack(dirs_s, dirs_blob)
    for position, rel in enumerate(dirs):
        if rel in candidates and _stat(os.path.join(root, rel) if rel else root) != _stat_at(dir_stats, position):
            return None
    if index is None:
        index = stamp_index(data)
    stats = array("q")
    stats.frombytes(stats_blob)
    moved = [rel for rel in candidates if rel in index
             and _stat(os.path.join(root, rel)) != _stat_at(stats, index[rel])]
    if len(moved) > CHANGED_MAX or not _same_tools(tool_stats):  # type: ignore[arg-type]
        return None
    return sorted(moved)


def stamp_dirs(data: tuple[object, ...]) -> list[str]:
    """The project directories a stamp's data vouches for ("" is the root)."""
    return _stamp_dir_columns(data)[0]


def _stamp_dir_columns(data: tuple[object, ...]) -> tuple[list[str], array[int]]:
    """A stamp's directories and their packed stats."""
    dirs_s, dirs_blob = data[7], data[8]
    assert isinstance(dirs_s, str) and isinstance(dirs_blob, bytes)
    return _unpack(dirs_s, dirs_blob)


def audit(root: str, data: tuple[object, ...], watched: set[str], paths: set[str] | None = None,
          index: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """For a tree watch (majordomo/tree_watch.py) that watches the directories `watched`: the
    stamp's files (only `paths` of them, or all and the directories too) whose stats differ from
    the stamp now, and the files no event on their directory would report: symlinks (their
    target changes elsewhere), files with other hard links (written through another name), and
    files outside the watched directories. `index`: the stamp's, if the caller has it."""
    stats_blob = data[5]
    assert isinstance(stats_blob, bytes)
    stats = array("q")
    stats.frombytes(stats_blob)
    if index is None:
        index = stamp_index(data)
    moved: list[str] = []
    uncovered: list[str] = []
    for rel in (index if paths is None else paths):
        position = index.get(rel)
        if position is None:
            continue
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
            if S_ISLNK(st.st_mode):
                uncovered.append(rel)
                st = os.stat(full)
            elif st.st_nlink > 1 or os.path.dirname(rel) not in watched:
                uncovered.append(rel)
            now: _Stat | None = stat_tuple(st)
        except OSError:
            now = None
            if os.path.dirname(rel) not in watched:
                uncovered.append(rel)
        if now != _stat_at(stats, position):
            moved.append(rel)
    if paths is None:
        dirs, dir_stats = _stamp_dir_columns(data)
        moved += [rel for position, rel in enumerate(dirs)
                  if _stat(os.path.join(root, rel) if rel else root) != _stat_at(dir_stats, position)]
    return moved, uncovered


def check_stamp(root: str, args_key: str) -> int | None:
    """The number of up-to-date steps if the stamp still vouches for everything, else None."""
    found = vouching_stamp(root, args_key)
    if found is None:
        return None
    steps = found[0][10]
    assert isinstance(steps, int)
    return steps


def vouching_stamp(root: str, args_key: str) -> tuple[tuple[object, ...], StampId | None] | None:
    """The stamp's data and file identity if it still vouches for everything (files whose stats
    alone moved are recorded anew), else None."""
    loaded = _load_stamp(root)
    if loaded is None:
        return None
    data, ident = loaded
    moved = changed_files(root, data, args_key)
    if moved is None:
        return None
    if not moved:
        return data, ident
    settled = settle_touched(root, data, moved)
    if settled is None:
        return None
    return settled, ident if settled is data else stamp_id(root)


def settle_touched(root: str, data: tuple[object, ...], paths: list[str],
                   index: dict[str, int] | None = None) -> tuple[object, ...] | None:
    """When the files `paths` of the stamp `data` moved only in their stats (`touch`, an editor's
    save of the same text), the stamp with their new stats, written; else None (the caller builds).
    The new stats are recorded only once a clock tick old (a save within the same tick could keep
    the mtime); until then the stamp is left as it was, and its data returned unchanged. `index`:
    the stamp's path positions, when the caller keeps them."""
    touched = touched_only(root, data, paths, index)
    return None if touched is None else settle(root, data, touched)


def touched_only(root: str, data: tuple[object, ...], paths: list[str],
                 index: dict[str, int] | None = None) -> list[tuple[int, str, str]] | None:
    """(position, path, recorded digest) of `paths` when each may still hold the bytes the stamp
    recorded (same size and mode: only a digest can tell); None when one surely changed. A stat
    each, so a caller with a few paths needs no thread for it."""
    if not paths or len(paths) > MAX_TOUCHED:
        return None
    index = stamp_index(data) if index is None else index
    stats_blob, digests_s = data[5], data[6]
    assert isinstance(stats_blob, bytes) and isinstance(digests_s, str)
    stats = array("q")
    stats.frombytes(stats_blob)
    positions: list[tuple[int, str]] = []
    for rel in paths:
        i = index.get(rel)
        if i is None:
            return None
        then, now = _stat_at(stats, i), _stat(os.path.join(root, rel))
        if now is None or then is None or now[_XBITS] != then[_XBITS] or now[0] != then[0]:
            return None  # gone, a mode change, or other bytes for sure: the full path decides
        positions.append((i, rel))
    digests = digests_s.split("\0")  # only now: most edits change the size, and 10,000 digests take a while
    touched = [(i, rel, digests[i]) for i, rel in positions]
    return touched if all(digest for _, _, digest in touched) else None


def settle(root: str, data: tuple[object, ...], touched: list[tuple[int, str, str]]) -> tuple[object, ...] | None:
    """`settle_touched` once `touched_only` found the candidates: hashes them (a subprocess, so
    run it in a thread)."""
    if not _same_bytes(root, touched):
        return None
    stats = array("q")
    stats.frombytes(data[5])  # type: ignore[arg-type]
    fresh = [(i, _stat(os.path.join(root, rel))) for i, rel, _ in touched]
    if not all(st is not None and st[1] < time.time_ns() - TICK_MARGIN_NS for _, st in fresh):
        return data
    for i, st in fresh:
        assert st is not None
        stats[i * _FIELDS:(i + 1) * _FIELDS] = array("q", st)
    settled = (*data[:5], stats.tobytes(), *data[6:])
    _dump(root, settled)
    return settled


def _same_bytes(root: str, touched: list[tuple[int, str, str]]) -> bool:
    """Files whose stats changed (an editor's save of the same text, `touch`): same digests?"""
    import subprocess

    paths = [os.path.join(root, rel) for _, rel, _ in touched]
    try:
        out = subprocess.run(["sha256sum", "-z", "--", *paths], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    found = [line.split(b" ", 1)[0].decode() for line in out.split(b"\0") if line]
    return len(found) == len(touched) and all(
        digest == f"sha256:{hexdigest}" for (_, _, digest), hexdigest in zip(touched, found, strict=True))


def _dump(root: str, data: tuple[object, ...]) -> None:
    path = stamp_path(root)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        marshal.dump(data, f)
    os.replace(tmp, path)
