"""Task dirs: made from the store in one pass, removed after the answer, and a killed chef's left
over ones removed at the next start. Real files, real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from artefacts.store import Store
from chefs.cooking import Cook
from chefs.taskdir import TaskDir, remove_leftovers
from protocol.errors import ErrorCode
from protocol.messages import InputRef, StepRequest


def _stored(tmp_path: Path, texts: dict[str, str]) -> tuple[Store, list[InputRef]]:
    store = Store(tmp_path / "store")
    sources = []
    for rel, text in texts.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_text(text)
        sources.append(tmp_path / "src" / rel)
    stored = asyncio.run(store.ingest(sources))
    return store, [InputRef(path=rel, digest=d, size=s) for rel, (d, s) in zip(texts, stored, strict=True)]


def test_inputs_linked_in_nested_dirs_and_task_dir_removed_after_the_step(tmp_path: Path) -> None:
    store, inputs = _stored(tmp_path, {"a.txt": "a\n", "sub/deep/b.txt": "b\n", "sub/c.txt": "c\n"})
    cook = Cook(store, tmp_path / "tasks", {}, sandbox=False)
    step = StepRequest(step_id="join", action_key="k", kind="shell", pods=[], inputs=inputs,
                       outputs=["out/all.txt"], command="cat a.txt sub/deep/b.txt sub/c.txt > out/all.txt")

    async def run() -> object:
        outcome = await cook.run(step)
        await cook.drain()
        return outcome

    outcome = asyncio.run(run())
    assert outcome.code == ErrorCode.OK, outcome.message
    assert store.path_for(outcome.outputs[0].digest).read_text() == "a\nb\nc\n"
    assert list((tmp_path / "tasks").iterdir()) == []
    assert cook.in_use() == frozenset()  # the inputs may be evicted again


def test_a_planted_symlink_is_no_store_entry(tmp_path: Path) -> None:
    store, [ref] = _stored(tmp_path, {"a.txt": "a\n"})
    entry = store.path_for(ref.digest)
    entry.unlink()
    entry.symlink_to("/etc/passwd")
    with pytest.raises(FileNotFoundError, match="not in the store"):
        TaskDir(tmp_path / "tasks", "s").make(store, [(ref.path, ref.digest)], [])


def test_leftovers_of_dead_chefs_are_removed_live_ones_spared(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        kept = tasks / f"{live.pid}-step-aaaa"
        gone = [tasks / f"{dead.pid}-step-bbbb", tasks / f"{os.getpid()}-step-cccc", tasks / "old-style-dddd"]
        for directory in (kept, *gone):
            (directory / "sub").mkdir(parents=True)
            (directory / "sub" / "f").write_text("x")
            (directory / "sub").chmod(0o500)  # a step may leave a read-only directory
        assert remove_leftovers(tasks) == 3
        assert [p.name for p in tasks.iterdir()] == [kept.name]
    finally:
        live.kill()
        live.wait()
