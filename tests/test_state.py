"""The state database keeps each step's result, key detail, ownership and log together."""

from __future__ import annotations

from pathlib import Path

from majordomo.state import KeyDetail, State
from protocol.messages import OutputRef

OUT = OutputRef(path="build/a.txt", digest="sha256:" + "a" * 64, size=3)
DETAIL = KeyDetail(command="cp a b", toolchain={"cp": "9.1"}, env=[], inputs={"a": "sha256:" + "b" * 64})


def test_a_result_is_recorded_whole_even_before_any_lookup(tmp_path: Path) -> None:
    """A result recorded before the state was ever asked for one (a fresh process) keeps every
    part of it: the step's last key and detail, its owner and its log, not only the result row."""
    state = State(tmp_path)
    try:
        state.record_result("copy", "key-1", [OUT], ["inc/x.h"], "chef-a", 0.5, "log text", DETAIL)
    finally:
        state.close()

    again = State(tmp_path)
    try:
        assert again.result("key-1") == [OUT]
        record = again.load_steps()["copy"]
        assert (record.action_key, record.discovered) == ("key-1", ("inc/x.h",))
        assert again.key_detail("copy") == DETAIL
        assert again.owners_of(OUT.digest) == {"chef-a"}
        log = again.step_log("copy")
        assert log is not None and (log[0], log[2]) == ("log text", "chef-a")
    finally:
        again.close()


def test_an_older_state_is_migrated_in_place_not_discarded(tmp_path: Path) -> None:
    """A schema-2 database (before placements were kept) opens, keeps its rows, and takes new ones."""
    import sqlite3

    from majordomo.state import SCHEMA

    (tmp_path / ".majordomo").mkdir()
    db = sqlite3.connect(tmp_path / ".majordomo" / "state.db")
    db.executescript(SCHEMA.replace(", at REAL, placement TEXT);", ", at REAL);"))
    db.execute("INSERT INTO meta VALUES('schema', '2')")
    db.execute("INSERT INTO logs VALUES('old', 'k0', 1, 'chef-z', 'old log', 1.0)")
    db.commit()
    db.close()

    state = State(tmp_path)
    try:
        assert state.step_log("old") == ("old log", True, "chef-z", 1.0)
        assert state.placement("old") == ""
        state.record_result("copy", "key-1", [OUT], [], "chef-a", 0.5, "log", DETAIL, '{"chef": "chef-a"}')
        assert state.placement("copy") == '{"chef": "chef-a"}'
    finally:
        state.close()
