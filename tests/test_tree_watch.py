"""The build server's tree watch (majordomo/tree_watch.py): real inotify on a real directory tree.

It may only narrow the comparison with the no-op stamp: every path whose stat moves is named at the
next `take`, and whenever events may be missing it says so (None) instead of naming too little."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from majordomo import noop
from majordomo.tree_watch import TreeWatch

OLD = time.time() - 120  # stamps vouch only for stats older than a clock tick


def _project(root: Path, outside: Path) -> tuple[object, ...]:
    """src/a.txt, src/b.txt (also hard-linked from outside), src/c.txt (a symlink to a file outside)
    and the recipe, aged, with a stamp that vouches for them."""
    (root / "src").mkdir(parents=True)
    (root / ".majordomo").mkdir()
    outside.mkdir()
    (root / "majordomo.toml").write_text("# recipe\n")
    for name in ("a", "b"):
        (root / f"src/{name}.txt").write_text(f"{name}\n")
    os.link(root / "src/b.txt", outside / "b.txt")
    (outside / "c.txt").write_text("c\n")
    (root / "src/c.txt").symlink_to(outside / "c.txt")
    for path in (outside / "c.txt", root / "src/a.txt", root / "src/b.txt", root / "majordomo.toml",
                 root / "src", root):
        os.utime(path, (OLD, OLD))
    files = [(f"src/{n}.txt", "sha256:" + hashlib.sha256(f"{n}\n".encode()).hexdigest(), None) for n in "abc"]
    data = noop.write_stamp(str(root), "key", "majordomo.toml", files, [], 3)
    assert data is not None
    return data


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[Path, TreeWatch, tuple[object, ...]]]:
    root = tmp_path / "p"
    stamp = _project(root, tmp_path / "outside")
    tree = TreeWatch(str(root))
    tree.start()
    await tree.adopt(stamp, None, None)
    assert tree.disabled is None
    yield root, tree, stamp
    tree.close()


async def test_a_write_is_named_and_nothing_else_is(watched: tuple[Path, TreeWatch, tuple[object, ...]]) -> None:
    root, tree, stamp = watched
    # Files a directory watch cannot vouch for are always named: a symlink's target lives
    # elsewhere, and a file with another hard link can be written through it.
    always = {"src/b.txt", "src/c.txt"}
    assert tree.take(stamp) == always
    (root / "src/a.txt").write_text("a, edited\n")
    named = tree.take(stamp)
    assert named is not None and {"src/a.txt", "src"} <= named
    assert noop.changed_among(str(root), stamp, "key", named) == ["src/a.txt"]
    assert tree.take(stamp) == always  # taken: the next request starts afresh
    assert tree.take(("another stamp",)) is None  # it vouches only for the stamp it adopted


async def test_writes_through_a_hard_link_or_a_symlink_are_found(
        watched: tuple[Path, TreeWatch, tuple[object, ...]]) -> None:
    root, tree, stamp = watched
    outside = root.parent / "outside"
    (outside / "b.txt").write_text("b, written through the other link\n")  # no event in the project
    (outside / "c.txt").write_text("c, edited at the symlink's target\n")
    named = tree.take(stamp)
    assert named is not None
    assert noop.changed_among(str(root), stamp, "key", named) == ["src/b.txt", "src/c.txt"]


async def test_a_path_still_unsettled_after_a_build_is_named_again(
        watched: tuple[Path, TreeWatch, tuple[object, ...]]) -> None:
    """A build that did not refresh a named file's stamp entry leaves it differing from the stamp:
    adopting the stamp puts it back, so it is not forgotten."""
    root, tree, stamp = watched
    (root / "src/a.txt").write_text("a, edited\n")
    assert "src/a.txt" in (tree.take(stamp) or ())
    await tree.adopt(stamp, stamp, set())
    assert "src/a.txt" in (tree.take(stamp) or ())


@pytest.mark.parametrize("change", ["remove", "rename"])
async def test_a_lost_watch_makes_it_say_it_cannot_tell(
        watched: tuple[Path, TreeWatch, tuple[object, ...]], change: str) -> None:
    root, tree, stamp = watched
    (root / "src/sub").mkdir()
    stamp = _restamp(root)
    await tree.adopt(stamp, None, None)
    tree.take(stamp)
    if change == "remove":
        (root / "src/sub").rmdir()
    else:
        (root / "src/sub").rename(root / "moved")
    assert tree.take(stamp) is None
    # Made again (ext4 often gives it the same inode number): the next whole stamp watches the
    # new directory, and events in it name paths again.
    (root / "src/sub").mkdir()
    stamp = _restamp(root)
    await tree.adopt(stamp, None, None)
    tree.take(stamp)
    (root / "src/sub/new.txt").write_text("new\n")
    assert "src/sub/new.txt" in (tree.take(stamp) or ())


async def test_a_directory_that_refuses_a_watch_is_compared_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No permission to watch one directory (EACCES; root is never refused, so it is simulated):
    the watch still works, naming that directory and its files at every take."""
    import errno

    from majordomo.inotify import Inotify

    refuse = Inotify.add_watch

    def add_watch(self: Inotify, path: str, mask: int) -> int:
        if path.endswith("/src"):
            raise OSError(errno.EACCES, "Permission denied")
        return refuse(self, path, mask)

    monkeypatch.setattr(Inotify, "add_watch", add_watch)
    root = tmp_path / "p"
    stamp = _project(root, tmp_path / "outside")
    tree = TreeWatch(str(root))
    tree.start()
    try:
        await tree.adopt(stamp, None, None)
        assert tree.disabled is None
        named = tree.take(stamp)
        assert named is not None and {"src", "src/a.txt", "src/b.txt", "src/c.txt"} <= named
        (root / "src/a.txt").write_text("a, edited where no event is raised\n")
        named = tree.take(stamp)
        assert named is not None and noop.changed_among(str(root), stamp, "key", named) == ["src/a.txt"]
    finally:
        tree.close()


def _restamp(root: Path) -> tuple[object, ...]:
    """A stamp of no files over the project's directories as they are now (aged to be vouched for)."""
    for directory in (root, *(p for p in root.rglob("*") if p.is_dir() and ".majordomo" not in p.parts)):
        os.utime(directory, (OLD, OLD))
    stamp = noop.write_stamp(str(root), "key", "majordomo.toml", [], [], 0)
    assert stamp is not None
    return stamp
