"""The MajorDomo's state in `.majordomo/state.db` (SQLite, WAL): it survives a crash mid-build.

Every result is committed in its own transaction the moment it arrives, so a killed build keeps
the steps it finished. One connection, used from one worker thread so disk waits never block the
event loop; start-up reads are bulk and synchronous (before there is anything else to do).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from protocol.messages import OutputRef

T = TypeVar("T")
SCHEMA_VERSION = 3
_SQL_CHUNK = 500  # host parameters per `IN (...)` query, well under SQLite's limit
# Migrations from each older schema to the next; the state is kept, not thrown away.
MIGRATIONS: dict[int, str] = {1: "ALTER TABLE steps ADD COLUMN detail BLOB",
                               2: "ALTER TABLE logs ADD COLUMN placement TEXT"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS stat_cache(
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, ctime_ns INTEGER, digest TEXT);
CREATE TABLE IF NOT EXISTS results(
    action_key TEXT PRIMARY KEY, step_id TEXT, outputs BLOB, chef_id TEXT, duration_s REAL, at REAL);
CREATE TABLE IF NOT EXISTS steps(
    step_id TEXT PRIMARY KEY, action_key TEXT, discovered BLOB, at REAL, detail BLOB);
CREATE TABLE IF NOT EXISTS owners(digest TEXT, pod TEXT, size INTEGER, PRIMARY KEY(digest, pod));
CREATE TABLE IF NOT EXISTS produced(path TEXT PRIMARY KEY, digest TEXT, step_id TEXT);
CREATE TABLE IF NOT EXISTS logs(
    step_id TEXT PRIMARY KEY, action_key TEXT, ok INTEGER, chef_id TEXT, log TEXT, at REAL, placement TEXT);
CREATE TABLE IF NOT EXISTS builds(
    id TEXT PRIMARY KEY, started REAL, duration_s REAL, ok INTEGER,
    steps_run INTEGER, steps_cached INTEGER, steps_failed INTEGER);
"""


@dataclass(frozen=True, slots=True)
class StatEntry:
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    digest: str


@dataclass(frozen=True, slots=True)
class StepRecord:
    action_key: str
    discovered: tuple[str, ...]


class KeyDetail(msgspec.Struct, frozen=True):
    """What went into a step's last action key, kept so `explain` can say what changed."""

    command: str
    toolchain: dict[str, str]
    env: list[tuple[str, str]]
    inputs: dict[str, str]


_outputs_enc = msgspec.msgpack.Encoder()
_outputs_dec = msgspec.msgpack.Decoder(list[OutputRef])
_paths_dec = msgspec.msgpack.Decoder(list[str])
_detail_dec = msgspec.msgpack.Decoder(KeyDetail)


def produced_paths(project_root: Path) -> set[str]:
    """Workspace files this tool wrote, read without opening the full state (for the loader)."""
    path = project_root / ".majordomo" / "state.db"
    if not path.exists():
        return set()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT path FROM produced")}
        finally:
            db.close()
    except sqlite3.Error:
        return set()


class StateError(Exception):
    """The state database is unusable (another version, or corrupt)."""


class State:
    def __init__(self, project_root: Path) -> None:
        self.dir = project_root / ".majordomo"
        self.dir.mkdir(exist_ok=True)
        self.path = self.dir / "state.db"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) < SCHEMA_VERSION:
            self._migrate(int(row[0]))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: state schema {row[0]} is newer than this majordomo's ({SCHEMA_VERSION}); "
                "upgrade majordomo")
        self._ino = os.stat(self.path).st_ino
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._results: dict[str, bytes] | None = None

    def _migrate(self, version: int) -> None:
        with self._db:
            self._db.execute("BEGIN")
            while version < SCHEMA_VERSION:
                self._db.execute(MIGRATIONS[version])
                version += 1
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._db.close()

    # -- bulk reads at start ----------------------------------------------------------------------

    def load_stat_cache(self) -> dict[str, StatEntry]:
        rows = self._db.execute("SELECT path, size, mtime_ns, ino, ctime_ns, digest FROM stat_cache")
        return {r[0]: StatEntry(r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def stat_entries(self, paths: Iterable[str]) -> dict[str, StatEntry]:
        """The stat cache entries of a few paths (a rebuild of what changed reads no more)."""
        found: dict[str, StatEntry] = {}
        for path in paths:
            row = self._db.execute("SELECT size, mtime_ns, ino, ctime_ns, digest FROM stat_cache WHERE path=?",
                                   (path,)).fetchone()
            if row:
                found[path] = StatEntry(*row)
        return found

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite's PRAGMA data_version): how the
        resident build server knows whether what it remembers of this database still holds."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def warm(self) -> None:
        """Load what `result` reads before a build asks (the build server does it between builds)."""
        self._load_results()

    def forget_memos(self) -> None:
        """Another process wrote the database: what we read of it before may be stale."""
        self._results = None

    def is_current_file(self) -> bool:
        """Still the file at our path? (`rm -rf .majordomo` leaves this connection on a ghost.)"""
        try:
            return os.stat(self.path).st_ino == self._ino
        except OSError:
            return False

    def load_steps(self) -> dict[str, StepRecord]:
        rows = self._db.execute("SELECT step_id, action_key, discovered FROM steps")
        return {r[0]: StepRecord(r[1], tuple(_paths_dec.decode(r[2])) if r[2] else ()) for r in rows}

    def step_durations(self, step_ids: list[str]) -> dict[str, float]:
        """How long each step's last recorded run took, for the steps that have one."""
        found: dict[str, float] = {}
        for start in range(0, len(step_ids), _SQL_CHUNK):
            chunk = step_ids[start:start + _SQL_CHUNK]
            found.update(self._db.execute(
                "SELECT s.step_id, r.duration_s FROM steps s JOIN results r ON r.action_key = s.action_key "
                f"WHERE s.step_id IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def key_detail(self, step_id: str) -> KeyDetail | None:
        row = self._db.execute("SELECT detail FROM steps WHERE step_id=?", (step_id,)).fetchone()
        return _detail_dec.decode(row[0]) if row and row[0] else None

    def result(self, action_key: str) -> list[OutputRef] | None:
        """Outputs recorded under a key. The first call loads every result in one query (a no-op
        build of 10,000 steps asks 10,000 times); later records go to both table and memory."""
        blob = self._load_results().get(action_key)
        return _outputs_dec.decode(blob) if blob is not None else None

    def _load_results(self) -> dict[str, bytes]:
        if self._results is None:
            self._results = dict(self._db.execute("SELECT action_key, outputs FROM results").fetchall())
        return self._results

    def load_produced(self) -> dict[str, tuple[str, str]]:
        return {r[0]: (r[1], r[2]) for r in self._db.execute("SELECT path, digest, step_id FROM produced")}

    def digest_of(self, path: str) -> str | None:
        """The digest this project last knew for an artefact path: an output, else a source."""
        for (key,) in self._db.execute("SELECT action_key FROM steps"):
            outputs = self.result(key) or []
            for out in outputs:
                if out.path == path:
                    return out.digest
        row = self._db.execute("SELECT digest FROM stat_cache WHERE path=?", (path,)).fetchone()
        return row[0] if row and row[0] else None

    def owners_of(self, digest: str) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT pod FROM owners WHERE digest=?", (digest,))}

    def step_log(self, step_id: str) -> tuple[str, bool, str, float] | None:
        row = self._db.execute("SELECT log, ok, chef_id, at FROM logs WHERE step_id=?", (step_id,)).fetchone()
        return (row[0], bool(row[1]), row[2], row[3]) if row else None

    # -- writes (call through `run`, or directly when no loop is involved) ------------------------

    def placement(self, step_id: str) -> str:
        """The placement decision of the step's last run (JSON: chef, reason, candidates), or ""."""
        row = self._db.execute("SELECT placement FROM logs WHERE step_id=?", (step_id,)).fetchone()
        return row[0] if row and row[0] else ""

    def save_stat_entries(self, entries: Iterable[tuple[str, StatEntry]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO stat_cache VALUES(?,?,?,?,?,?)",
                [(p, e.size, e.mtime_ns, e.ino, e.ctime_ns, e.digest) for p, e in entries],
            )

    def forget_stat_entries(self, paths: Iterable[str]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM stat_cache WHERE path=?", [(p,) for p in paths])

    def record_result(
        self, step_id: str, action_key: str, outputs: list[OutputRef], discovered: list[str],
        chef_id: str, duration_s: float, log: str, detail: KeyDetail | None = None, placement: str = "",
    ) -> None:
        """One transaction: the result, the step's last key and discoveries, ownership, the log."""
        now = time.time()
        blob = _outputs_enc.encode(outputs)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES(?,?,?,?,?,?)",
                (action_key, step_id, blob, chef_id, duration_s, now),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO steps VALUES(?,?,?,?,?)",
                (step_id, action_key, _outputs_enc.encode(discovered), now,
                 _outputs_enc.encode(detail) if detail else None),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO owners VALUES(?,?,?)", [(o.digest, chef_id, o.size) for o in outputs]
            )
            self._db.execute("INSERT OR REPLACE INTO logs VALUES(?,?,?,?,?,?,?)",
                             (step_id, action_key, 1, chef_id, log, now, placement))
        if self._results is not None:
            self._results[action_key] = blob

    def record_failure(self, step_id: str, action_key: str, chef_id: str, log: str, placement: str = "") -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO logs VALUES(?,?,?,?,?,?,?)",
                             (step_id, action_key, 0, chef_id, log, time.time(), placement))


    def add_owner(self, digest: str, pod: str, size: int) -> None:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO owners VALUES(?,?,?)", (digest, pod, size))

    def drop_owner(self, digest: str, pod: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM owners WHERE digest=? AND pod=?", (digest, pod))

    def record_produced(self, path: str, digest: str, step_id: str, stat: StatEntry) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO produced VALUES(?,?,?)", (path, digest, step_id))
            self._db.execute(
                "INSERT OR REPLACE INTO stat_cache VALUES(?,?,?,?,?,?)",
                (path, stat.size, stat.mtime_ns, stat.ino, stat.ctime_ns, stat.digest),
            )

    def forget_produced(self, path: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM produced WHERE path=?", (path,))

    def record_build(self, build_id: str, started: float, duration_s: float, ok: bool,
                     run: int, cached: int, failed: int) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO builds VALUES(?,?,?,?,?,?,?)",
                             (build_id, started, duration_s, int(ok), run, cached, failed))
