"""The no-op fast path trusts file stats only while they prove nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import UPPER_JOIN, majordomo, write_project

RECIPE = UPPER_JOIN
FAST = "nothing changed"


def test_stamp_is_used_only_while_nothing_changed(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    assert majordomo(project, "build").code == 0
    fast = majordomo(project, "build", "--json")
    assert FAST in fast.stderr and fast.summary["steps_cached"] == 3 and fast.summary["steps_run"] == 0

    os.utime(project / "src/a.txt")  # touched, same bytes: hashed, still nothing to do
    touched = majordomo(project, "build", "--json")
    assert FAST in touched.stderr and touched.summary["steps_run"] == 0
    assert FAST in majordomo(project, "build").stdout

    (project / "src/a.txt").chmod(0o755)  # same bytes, but the executable bit is in the key
    chmodded = majordomo(project, "build", "--json")
    assert FAST not in chmodded.stderr and chmodded.summary["steps_run"] == 1  # join: cut off

    (project / "src/b.txt").write_text("bee\n")  # content
    run = majordomo(project, "build", "--json")
    assert FAST not in run.stderr and run.summary["steps_run"] == 2
    assert (project / "build/all.txt").read_text() == "A\nBEE\n"
    assert FAST in majordomo(project, "build").stdout

    (project / "src/c.txt").write_text("c\n")  # a new file the pattern rule and the glob pick up
    run = majordomo(project, "build", "--json")
    assert FAST not in run.stderr and run.summary["steps_run"] == 2
    assert (project / "build/all.txt").read_text() == "A\nBEE\nC\n"

    (project / "build/all.txt").unlink()  # an output removed
    run = majordomo(project, "build", "--json")
    assert FAST not in run.stderr and (project / "build/all.txt").read_text() == "A\nBEE\nC\n"

    (project / "majordomo.toml").write_text(RECIPE.replace("cat $^", "cat $^ $^"))  # the recipe
    run = majordomo(project, "build", "--json")
    assert FAST not in run.stderr and run.summary["steps_run"] == 1

    # Another target is another question: the stamp of one never answers for the other.
    run = majordomo(project, "build", "--json", "build/a.up")
    assert FAST not in run.stderr and run.summary["steps_cached"] == 1


def test_failed_build_leaves_no_stamp(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"src/a.txt": "a\n"})
    assert majordomo(project, "build").code == 0
    (project / "majordomo.toml").write_text(RECIPE.replace("tr a-z A-Z", "false &&"))
    assert majordomo(project, "build").code == 1
    assert not (project / ".majordomo" / "noop.stamp").exists()
    assert majordomo(project, "build").code == 1  # still failing: no stamp may claim otherwise


def test_future_mtime_neither_hangs_nor_stamps(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"src/a.txt": "a\n"})
    future = 4_000_000_000 * 10**9  # the year 2096
    os.utime(project / "src/a.txt", ns=(future, future))
    assert majordomo(project, "build", timeout=60).code == 0
    assert not (project / ".majordomo" / "noop.stamp").exists()
    assert FAST not in majordomo(project, "build", timeout=60).stdout


def test_a_file_saved_during_the_build_is_not_vouched_for(tmp_path: Path) -> None:
    """The stamp pairs each digest with the stat the build took it at: a save between the build
    reading a file and the stamp being written must make the next build look at the file again."""
    import hashlib
    import time

    from majordomo import noop

    root = tmp_path / "p"
    (root / ".majordomo").mkdir(parents=True)
    (root / "majordomo.toml").write_text("# recipe\n")
    source = root / "a.txt"
    source.write_text("old\n")
    old = time.time() - 60
    os.utime(source, (old, old))
    os.utime(root / "majordomo.toml", (old, old))
    os.utime(root, (old, old))
    st = os.stat(source)
    taken = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    digest = "sha256:" + hashlib.sha256(b"old\n").hexdigest()
    source.write_text("new\n")  # saved while the build ran: same size, other bytes
    os.utime(source, (old + 1, old + 1))
    os.utime(root, (old, old))

    noop.write_stamp(str(root), "key", "majordomo.toml", [("a.txt", digest, taken)], [], 1)
    assert noop.check_stamp(str(root), "key") is None  # the build must run: a.txt changed

    noop.write_stamp(str(root), "key", "majordomo.toml", [("a.txt", "sha256:" + hashlib.sha256(b"new\n").hexdigest(),
                                                          None)], [], 1)
    assert noop.check_stamp(str(root), "key") == 1  # the control: a stamp of the current bytes holds


def test_a_failed_check_names_the_changed_files_and_its_stamp(tmp_path: Path) -> None:
    """What the build server starts a carried-over build from (majordomo/carryover.py): the files
    whose stats moved since its stamp; nothing when a directory or the recipe changed. Narrowed to
    the paths a tree watch named, the answer is the same."""
    import hashlib
    import time

    from majordomo import noop

    root = tmp_path / "p"
    (root / ".majordomo").mkdir(parents=True)
    (root / "majordomo.toml").write_text("# recipe\n")
    old = time.time() - 60
    files = []
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_text(f"{name}\n")
        os.utime(root / name, (old, old))
        files.append((name, "sha256:" + hashlib.sha256(f"{name}\n".encode()).hexdigest(), None))
    os.utime(root / "majordomo.toml", (old, old))
    os.utime(root, (old, old))
    data = noop.write_stamp(str(root), "key", "majordomo.toml", files, [], 3)
    assert data is not None

    (root / "b.txt").write_text("longer than before\n")
    assert noop.check_stamp(str(root), "key") is None
    assert noop.changed_files(str(root), data, "key") == ["b.txt"]
    assert noop.changed_among(str(root), data, "key", {"b.txt", "c.txt", "elsewhere.txt"}) == ["b.txt"]
    assert noop.changed_among(str(root), data, "key", {"a.txt"}) == []  # not named: not looked at
    assert noop.changed_files(str(root), data, "other args") is None
    assert noop.changed_among(str(root), data, "other args", {"b.txt"}) is None

    (root / "d.txt").write_text("new file\n")  # the directory changed: globs may see more
    assert noop.changed_files(str(root), data, "key") is None
    assert noop.changed_among(str(root), data, "key", {"", "d.txt"}) is None


def test_a_file_added_to_a_project_without_subdirectories_is_seen(tmp_path: Path) -> None:
    """The stamp stored its one directory, the project root, as an empty list of paths, so adding a
    file a glob reads went unnoticed in a project without subdirectories."""
    recipe = '[[step]]\nname = "join"\ninputs = ["*.txt"]\noutputs = ["all.out"]\ncommand = "cat $^ > $@"\n'
    project = write_project(tmp_path / "p", recipe, {"a.txt": "a\n"})
    assert majordomo(project, "build").code == 0
    assert FAST in majordomo(project, "build").stdout
    (project / "b.txt").write_text("b\n")
    run = majordomo(project, "build", "--json")
    assert run.code == 0 and FAST not in run.stderr and run.summary["steps_run"] == 1, run.stderr
    assert (project / "all.out").read_text() == "a\nb\n"


def _aged_project(tmp_path: Path) -> tuple[Path, float]:
    """A project whose files and directories all date from a minute ago (older than any clock tick)."""
    import time

    root = tmp_path / "p"
    (root / ".majordomo").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "build").mkdir()
    (root / "majordomo.toml").write_text("# recipe\n")
    (root / "src/a.txt").write_text("a\n")
    (root / "build/out.txt").write_text("out\n")
    old = time.time() - 60
    for rel in ("majordomo.toml", "src/a.txt", "build/out.txt", "src", "build", "."):
        os.utime(root / rel, (old, old))
    return root, old


def _entry(root: Path, rel: str, text: str) -> tuple[str, str, tuple[int, int, int, int]]:
    import hashlib

    st = os.stat(root / rel)
    return rel, "sha256:" + hashlib.sha256(text.encode()).hexdigest(), (st.st_size, st.st_mtime_ns, st.st_ino,
                                                                         st.st_ctime_ns)


def test_a_file_added_while_the_build_ran_is_not_vouched_for(tmp_path: Path) -> None:
    """The directories' stats are the listing's (when globs were expanded), not the stamp's time:
    a file added in between was in no glob, so the next build must look again."""
    from majordomo import noop
    from majordomo.cli import _source_lister

    root, _old = _aged_project(tmp_path)
    listed = noop.ListedDirs()
    assert _source_lister(root, listed)() == ["build/out.txt", "majordomo.toml", "src/a.txt"]
    (root / "src/b.txt").write_text("added while the build ran\n")

    files = [_entry(root, "src/a.txt", "a\n")]
    assert noop.write_stamp(str(root), "key", "majordomo.toml", files, [], 1, listed=listed) is not None
    assert noop.check_stamp(str(root), "key") is None  # src/ moved past the listing: look again

    listed = noop.ListedDirs()
    _source_lister(root, listed)()
    os.utime(root / "src", (_old, _old))  # the control: a listing that saw b.txt, and an aged src/
    listed.stats["src"] = noop.stat_tuple(os.stat(root / "src"))
    noop.write_stamp(str(root), "key", "majordomo.toml", files, [], 1, listed=listed)
    assert noop.check_stamp(str(root), "key") == 1


def test_an_output_removed_after_the_answer_is_not_vouched_for(tmp_path: Path) -> None:
    """The stamp is written after the client has its answer; what the user does meanwhile must
    show. The build wrote build/out.txt and noted its stat and its directory's right then."""
    from majordomo import noop

    root, _old = _aged_project(tmp_path)
    listed = noop.ListedDirs()
    from majordomo.cli import _source_lister

    _source_lister(root, listed)()
    output = _entry(root, "build/out.txt", "out\n")
    written = {"build": noop.stat_tuple(os.stat(root / "build"))}
    (root / "build/out.txt").unlink()  # right after the answer, before the stamp job ran

    noop.write_stamp(str(root), "key", "majordomo.toml", [_entry(root, "src/a.txt", "a\n"), output], [], 1,
                     written=written, listed=listed)
    assert noop.check_stamp(str(root), "key") is None


def test_a_refreshed_stamp_vouches_for_what_the_build_saw_only(tmp_path: Path) -> None:
    """A carried-over build rewrites only the entries it visited (noop.refresh_stamp)."""
    from majordomo import noop

    root, old = _aged_project(tmp_path)
    files = [_entry(root, "src/a.txt", "a\n"), _entry(root, "build/out.txt", "out\n")]
    data = noop.write_stamp(str(root), "key", "majordomo.toml", files, [], 2)
    assert data is not None and noop.check_stamp(str(root), "key") == 2

    (root / "src/a.txt").write_text("edited\n")  # the edit the carried-over build rebuilt from
    os.utime(root / "src/a.txt", (old + 1, old + 1))
    seen = [_entry(root, "src/a.txt", "edited\n")]
    refreshed = noop.refresh_stamp(str(root), data, seen, {}, 2)
    assert refreshed is not None and noop.check_stamp(str(root), "key") == 2  # stat-only again

    (root / "src/a.txt").write_text("edited again, during the build\n")
    refreshed = noop.refresh_stamp(str(root), data, seen, {}, 2)
    assert refreshed is not None and noop.check_stamp(str(root), "key") is None

    assert noop.refresh_stamp(str(root), data, [_entry(root, "majordomo.toml", "# recipe\n")], {}, 2) is None
